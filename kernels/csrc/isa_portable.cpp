// Portable path: generic 16-byte vectors (SSE2 on x86-64, NEON on arm64), no intrinsics.
#include "prelude.h"
#define KK_NS portable
#define KK_W 4
#define KK_LEVEL 0
#include "body.inc"
