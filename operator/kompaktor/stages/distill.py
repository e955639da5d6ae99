"""distill: train the student to match a teacher's softened outputs as well as the labels.

The student is the stage's input model, optionally made thinner first (`student.widthMultiplier`,
by the same channel surgery as structured pruning). The teacher is the job's input model, an
earlier stage's output, or any model URI. Loss (Hinton et al. 2015):
alpha·T²·KL(softmax(t/T) ‖ softmax(s/T)) + (1-alpha)·CE(s, y).

With `featureWeight` > 0 the loss also pulls the student's hidden conv/linear outputs towards
the teacher's (FitNets, Romero et al. 2015): featureWeight × the mean over matched layer pairs
of MSE(s, t) / mean(t²). Where a thinner student's width differs, a linear projection
(student width → teacher width) learns along with the student and is dropped at export. Which
pairs were matched, and which left out and why, goes to result.json.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, ValidationInfo, field_validator

from kompaktor.errors import StageError
from kompaktor.models import ModelFormat, format_of
from kompaktor.stages.base import PlanContext, Stage, StageContext, StageParams, StageResult

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kompaktor.distillation import FeatureMatch
    from kompaktor.surgery.features import HiddenLayer


class TeacherRef(StageParams):
    from_stage: str | None = Field(
        None, description="Name of an earlier stage whose output teaches."
    )
    uri: str | None = Field(
        None,
        description="Model URI of the teacher; a relative path is relative to the job file's "
        "folder (filled in by the plan for fromStage).",
    )
    digest: str | None = Field(
        None,
        description="sha256 of the teacher, filled in by the plan (from the earlier stage's "
        "output, or the input probe's digest of the uri) so the cache key follows its content.",
    )


class StudentSpec(StageParams):
    width_multiplier: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Keep this fraction of every removable layer's channels before distilling.",
    )


class FeaturePair(StageParams):
    teacher: str = Field(description="Teacher layer (its weight's path without .weight).")
    student: str = Field(description="Student layer (its weight's path without .weight).")


class DistillParams(StageParams):
    teacher: TeacherRef = Field(
        default_factory=TeacherRef,
        description="The teacher: {fromStage: NAME}, {uri: URI}, or omitted for the job's "
        "input model.",
    )
    student: StudentSpec = Field(
        default_factory=StudentSpec, description="How to derive the student."
    )
    temperature: float = Field(4.0, gt=0.0, description="Softmax temperature T for soft targets.")
    alpha: float = Field(0.7, ge=0.0, le=1.0, description="Weight of the soft-target loss.")
    epochs: int = Field(5, ge=1, description="Training epochs.")
    lr: float = Field(1e-3, gt=0.0, description="Learning rate.")
    batch_size: int = Field(64, ge=1, description="Batch size.")
    feature_weight: float = Field(
        0.0,
        ge=0.0,
        description="Weight of hidden-feature matching (FitNets): the squared error between "
        "the outputs of matched teacher and student conv/linear layers, relative to the "
        "teacher's (so layers of any scale weigh alike), averaged over the pairs and added to "
        "the loss. 0 turns it off. Needs pt2 models.",
    )
    feature_layers: tuple[FeaturePair, ...] = Field(
        (),
        description="Layer pairs to match, [{teacher: NAME, student: NAME}]. Default: the "
        "hidden conv/linear layers the two models share by name, or else in order.",
    )
    feature_projection: bool = Field(
        True,
        description="Where a pair's feature widths differ (a thinner student), learn a linear "
        "map from the student's width to the teacher's, trained with the student and not "
        "exported; false: leave such pairs out.",
    )

    @field_validator("feature_layers")
    @classmethod
    def _layers_need_a_weight(
        cls, layers: tuple[FeaturePair, ...], info: ValidationInfo
    ) -> tuple[FeaturePair, ...]:
        if layers and not info.data.get("feature_weight"):
            raise ValueError("only applies when featureWeight > 0")
        return layers


class DistillStage(Stage[DistillParams]):
    type: ClassVar[str] = "distill"
    Params = DistillParams
    reports_curve: ClassVar[bool] = True

    def epochs(self, params: DistillParams) -> int:
        return params.epochs

    def check(self, params: DistillParams, plan: PlanContext) -> None:
        source = params.teacher.from_stage
        if source is not None and params.teacher.uri is not None:
            # Only a job file can say both (the plan fills uri at run time, after this check);
            # which one it meant is not ours to guess.
            raise ValueError(
                f"params.teacher: set either uri or fromStage, not both (uri "
                f"{params.teacher.uri!r}, fromStage {source!r})"
            )
        if source is not None and source not in plan.earlier_stages:
            raise ValueError(f"params.teacher.fromStage: {source!r} is not an earlier stage")
        if params.feature_weight > 0:
            teacher = params.teacher.uri
            formats = [("student", plan.input_format)]
            teacher_format = None if teacher is None else _format(teacher)
            if teacher_format is not None:
                formats.append(("teacher", teacher_format))
            for role, fmt in formats:
                if fmt != "pt2":
                    raise ValueError(
                        f"params.featureWeight: hidden-feature matching reads the layers of "
                        f"a torch.export graph and needs a pt2 {role} (got {fmt})"
                    )
        if plan.task != "classification":
            raise ValueError(
                f"distill needs a classification task (soft targets are class probabilities); "
                f"the dataset's task is {plan.task}"
            )

    def run(self, ctx: StageContext[DistillParams]) -> StageResult:
        import torch

        from kompaktor.distillation import WithProjections, feature_loss, soft_target_loss
        from kompaktor.stages.curves import curve_callback, validation_scorer
        from kompaktor.surgery import stored_elements, width_reduce
        from kompaktor.surgery.batches import sample
        from kompaktor.training import fit

        p = ctx.params
        teacher = _teacher(ctx)
        if p.feature_weight > 0:
            teacher = _dense_teacher(ctx, teacher)
        student = copy.deepcopy(ctx.model.require_module("distill"))
        example = sample(ctx.dataset)
        before = stored_elements(student)
        _check_shapes(teacher, student, example)  # before any work: the input already shows it
        if p.student.width_multiplier < 1.0:
            try:
                student, removed = width_reduce(student, p.student.width_multiplier, example)
            except (TypeError, ValueError) as error:
                raise StageError(f"distill: params.student.widthMultiplier: {error}") from None
            if removed == 0:  # a "thinner" student that is the input model would be a surprise
                raise StageError(
                    f"distill: params.student.widthMultiplier: {p.student.width_multiplier} "
                    "keeps every channel of the layers that have removable ones; use a smaller "
                    "multiplier"
                )
            ctx.log(f"distill: student has {removed} fewer channels")
            _check_shapes(teacher, student, example)
        loss_fn = soft_target_loss(teacher, p.temperature, p.alpha)
        trained: nn.Module = student
        details: dict[str, Any] = {}
        if p.feature_weight > 0:
            torch.manual_seed(ctx.seed)  # the projections' initial weights
            match = _match_features(p, teacher, student, example)
            loss_fn = feature_loss(match, p.temperature, p.alpha, p.feature_weight)
            trained = WithProjections(student, match.projections)
            details = {"featurePairs": match.report(), "featureSkipped": match.skipped}
            ctx.log(f"distill: matching {len(match.pairs)} hidden-feature pairs")
        fit(
            trained,
            ctx.dataset,
            epochs=p.epochs,
            lr=p.lr,
            batch_size=p.batch_size,
            seed=ctx.seed,
            loss_fn=loss_fn,
            log=ctx.log,
            on_epoch=curve_callback(ctx.curve, validation_scorer(ctx), student, p.epochs),
        )
        metrics = {
            "parametersInput": float(before),
            "parametersStudent": float(stored_elements(student)),
            "parametersTeacher": float(stored_elements(teacher)),
        }
        if p.feature_weight > 0:
            metrics["featurePairs"] = float(len(details["featurePairs"]))
        return StageResult(module=student, metrics=metrics, details=details)


def _teacher(ctx: StageContext[DistillParams]) -> nn.Module:
    ref = ctx.params.teacher
    if ref.uri is not None:
        from kompaktor.models import load_model

        return load_model(ctx.resolve(ref.uri)).require_module("distill")
    if ref.from_stage is not None:
        raise StageError(
            f"distill: params.teacher.fromStage: {ref.from_stage!r} has no output URI; "
            "the plan should have filled params.teacher.uri"
        )
    return ctx.reference.require_module("distill")


def _dense_teacher(ctx: StageContext[DistillParams], teacher: nn.Module) -> nn.Module:
    """The teacher with layers on the sparse kernels (prune's `runtime: sparse`) as the dense
    layers they compute, so feature matching sees them as hidden linear layers; a copy, since
    the reference model is the job's yardstick after the stage too."""
    from torch import fx

    from kompaktor.surgery import dense_sparse_linears

    if not isinstance(teacher, fx.GraphModule):
        return teacher
    dense = copy.deepcopy(teacher)
    layers = dense_sparse_linears(dense)
    if not layers:
        return teacher
    ctx.log(
        f"distill: the teacher's {len(layers)} sparse layer(s) ({', '.join(layers)}) run dense "
        "here, so their outputs can be matched"
    )
    return dense


def _check_shapes(
    teacher: nn.Module, student: nn.Module, example: tuple[torch.Tensor, ...]
) -> None:
    import torch

    with torch.no_grad():
        t_shape, s_shape = tuple(teacher(*example).shape), tuple(student(*example).shape)
    if t_shape != s_shape:
        raise StageError(
            f"distill: params.teacher: the teacher's output shape {t_shape} does not match "
            f"the student's {s_shape} on a sample batch"
        )


def _match_features(
    p: DistillParams, teacher: nn.Module, student: nn.Module, example: tuple[torch.Tensor, ...]
) -> FeatureMatch:
    """Pair hidden layers (given, by name, or in order) whose outputs differ at most in width;
    StageError when the user asked for feature matching and nothing can be matched."""
    from torch import nn

    from kompaktor.distillation import FeatureMatch, MatchedPair
    from kompaktor.surgery import as_graph_module
    from kompaktor.surgery.features import feature_view, hidden_layers

    graphs = []
    for role, module in (("teacher", teacher), ("student", student)):
        try:
            graphs.append(as_graph_module(module, example))
        except TypeError as error:
            raise StageError(f"distill: params.featureWeight: the {role}: {error}") from None
    t_gm, s_gm = graphs
    t_layers = {layer.name: layer for layer in hidden_layers(t_gm, example)}
    s_layers = {layer.name: layer for layer in hidden_layers(s_gm, example)}
    if p.feature_layers:
        candidates = []
        for index, given in enumerate(p.feature_layers):
            for role, name, layers in (
                ("teacher", given.teacher, t_layers),
                ("student", given.student, s_layers),
            ):
                if name not in layers:
                    known = ", ".join(layers) or "none"
                    raise StageError(
                        f"distill: params.featureLayers[{index}].{role}: {name!r} is not a "
                        f"hidden conv/linear layer of the {role} (hidden layers: {known})"
                    )
            candidates.append((t_layers[given.teacher], s_layers[given.student]))
    else:
        shared = [name for name in s_layers if name in t_layers]
        candidates = (
            [(t_layers[name], s_layers[name]) for name in shared]
            if shared
            else list(zip(t_layers.values(), s_layers.values(), strict=False))
        )
    pairs: list[MatchedPair] = []
    projections = nn.ModuleDict()
    skipped = []
    for t, s in candidates:
        problem = _mismatch(t, s, p.feature_projection)
        if problem is not None:
            if p.feature_layers:
                raise StageError(f"distill: params.featureLayers: {t.name} ↔ {s.name}: {problem}")
            skipped.append(f"{t.name} ↔ {s.name}: {problem}")
            continue
        key = None
        if t.width != s.width:
            key = f"p{len(projections)}"
            projections[key] = nn.Linear(s.width, t.width, bias=False)
        pairs.append(MatchedPair(t, s, key))
    if not pairs:
        why = "; ".join(skipped) if skipped else "the teacher or the student has no hidden layer"
        raise StageError(
            f"distill: params.featureWeight: no teacher/student layer pair can be matched "
            f"({why}); name pairs in params.featureLayers or set featureWeight to 0"
        )
    return FeatureMatch(
        pairs,
        feature_view(t_gm, [pair.teacher.name for pair in pairs]),
        feature_view(s_gm, [pair.student.name for pair in pairs]),
        projections,
        skipped,
    )


def _mismatch(t: HiddenLayer, s: HiddenLayer, projection: bool) -> str | None:
    """Why a pair's outputs cannot be compared (None: they can)."""
    shapes = f"output shapes {t.shape} and {s.shape}"
    if len(t.shape) != len(s.shape) or t.channel_dim != s.channel_dim:
        return f"{shapes} have different layouts"
    if any(
        a != b for i, (a, b) in enumerate(zip(t.shape, s.shape, strict=True)) if i != t.channel_dim
    ):
        return f"{shapes} differ beyond the feature width"
    if t.width != s.width and not projection:
        return f"widths {s.width} and {t.width} differ and featureProjection is false"
    return None


def _format(uri: str) -> ModelFormat | None:
    try:
        return format_of(uri)
    except ValueError:
        return None
