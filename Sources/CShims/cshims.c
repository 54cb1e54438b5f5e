#define _GNU_SOURCE
#include "cshims.h"
#include <errno.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/xattr.h>
#include <fcntl.h>
#include <spawn.h>
#include <unistd.h>

int secretfs_peer_credentials(int fd, pid_t *pid, uid_t *uid, gid_t *gid) {
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) return -1;
    if (len != sizeof(cred)) { errno = EPROTO; return -1; }
    *pid = cred.pid;
    *uid = cred.uid;
    *gid = cred.gid;
    return 0;
}

int secretfs_harden_process(void) {
    struct rlimit none = { 0, 0 };
    if (setrlimit(RLIMIT_CORE, &none) != 0) return -1;
    if (prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) != 0) return -1;
    return 0;
}

int secretfs_unblock_all_signals(void) {
    sigset_t all;
    sigemptyset(&all);
    return sigprocmask(SIG_SETMASK, &all, NULL);
}

int secretfs_is_dumpable(void) {
    return prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
}

int secretfs_pipe_cloexec(int fds[2]) {
    return pipe2(fds, O_CLOEXEC);
}

short secretfs_spawn_setsid_flag(void) {
    return POSIX_SPAWN_SETSID;
}

int secretfs_spawn_add_closefrom(posix_spawn_file_actions_t *actions, int from) {
    return posix_spawn_file_actions_addclosefrom_np(actions, from);
}

int secretfs_peer_groups(int fd, gid_t *groups, int max) {
    socklen_t len = (socklen_t)(sizeof(gid_t) * (max > 0 ? (size_t)max : 0));
    if (getsockopt(fd, SOL_SOCKET, SO_PEERGROUPS, groups, &len) != 0) {
        if (errno == ERANGE) return (int)(len / sizeof(gid_t));
        return -1;
    }
    return (int)(len / sizeof(gid_t));
}

int secretfs_o_path_flag(void) {
    return O_PATH;
}

int secretfs_accept_cloexec(int fd) {
    return accept4(fd, NULL, NULL, SOCK_CLOEXEC);
}

int secretfs_eventfd(int nonblocking) {
    return eventfd(0, EFD_CLOEXEC | (nonblocking ? EFD_NONBLOCK : 0));
}

int secretfs_set_access_acl(const char *path, const void *value, unsigned long size) {
    return lsetxattr(path, "system.posix_acl_access", value, size, 0);
}

long secretfs_get_access_acl(const char *path, void *value, unsigned long size) {
    return (long)lgetxattr(path, "system.posix_acl_access", value, size);
}

int secretfs_name_thread(const char *name) {
    return prctl(PR_SET_NAME, (unsigned long)name, 0, 0, 0);
}
