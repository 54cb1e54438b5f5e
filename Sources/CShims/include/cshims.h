// Small libc helpers that Swift cannot reach directly: struct ucred and
// SO_PEERCRED are hidden without _GNU_SOURCE, prctl is variadic.
#ifndef SECRETFS_CSHIMS_H
#define SECRETFS_CSHIMS_H
#include <sys/types.h>
#include <spawn.h>

/// Credentials of the process that connected a Unix socket (SO_PEERCRED).
/// Returns 0, or -1 with errno set.
int secretfs_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid);

/// Make this process undumpable (PR_SET_DUMPABLE 0: no core file, no ptrace
/// or /proc/PID/mem access even by processes of the same uid) and set RLIMIT_CORE to 0.
/// Returns 0, or -1 with errno set.
int secretfs_harden_process(void);

/// Unblock every signal for the calling thread. Test runners spawn children
/// with most signals blocked; libfuse's SIGTERM/SIGINT handlers need them.
int secretfs_unblock_all_signals(void);

/// Whether this process is dumpable (for tests of the hardening).
int secretfs_is_dumpable(void);

// Names the calling thread (prctl PR_SET_NAME, at most 15 bytes shown), for
// `top -H`, /proc/PID/task/TID/comm and the benchmarks.
int secretfs_name_thread(const char *name);


/// pipe2(O_CLOEXEC), hidden without _GNU_SOURCE.
int secretfs_pipe_cloexec(int fds[2]);

/// POSIX_SPAWN_SETSID (glibc >= 2.26), hidden without _GNU_SOURCE.
short secretfs_spawn_setsid_flag(void);

/// posix_spawn_file_actions_addclosefrom_np (glibc >= 2.34), hidden without
/// _GNU_SOURCE: the child closes every descriptor from `from` on.
int secretfs_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from);

/// Supplementary groups of the process that connected a Unix socket
/// (SO_PEERGROUPS, Linux 4.13+). Writes at most `max` gids to `groups` and
/// returns how many the peer has (which may exceed `max`: call again with a
/// larger buffer), or -1 with errno set.
int secretfs_peer_groups(int fd, gid_t *groups, int max);

/// O_PATH (open a path for *at() lookups and fstat only), hidden without _GNU_SOURCE.
int secretfs_o_path_flag(void);

/// accept4(SOCK_CLOEXEC), hidden without _GNU_SOURCE.
int secretfs_accept_cloexec(int fd);

/// eventfd(0, EFD_CLOEXEC [| EFD_NONBLOCK]); sys/eventfd.h is not in Swift's Glibc module.
int secretfs_eventfd(int nonblocking);

/// lsetxattr(path, "system.posix_acl_access", value, size, 0): a socket
/// file's POSIX ACL (sys/xattr.h is not in Swift's Glibc module). Returns 0,
/// or -1 with errno set.
int secretfs_set_access_acl(const char *path, const void *value, unsigned long size);

/// lgetxattr(path, "system.posix_acl_access", ...): the bytes read, or -1 with errno set.
long secretfs_get_access_acl(const char *path, void *value, unsigned long size);
#endif
