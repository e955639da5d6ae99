"""Low-rank factorization and weight sharing, for the compress stage."""

from kompaktor.compression.lowrank import Factorized, choose_rank, factorize
from kompaktor.compression.sharing import Shared, cluster_1d, share_weights

__all__ = ["Factorized", "Shared", "choose_rank", "cluster_1d", "factorize", "share_weights"]
