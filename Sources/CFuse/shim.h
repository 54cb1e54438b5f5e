// libfuse 3 low-level API. FUSE_USE_VERSION must be set before the include;
// 312 gives fuse_session_loop_mt with fuse_loop_config (libfuse >= 3.12).
#define FUSE_USE_VERSION 312
#include <fuse_lowlevel.h>
