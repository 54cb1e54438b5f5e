# Sourced by scripts/test and scripts/sanitize (not run on its own).
#
# Mount tests live under /tmp/secretfs-test-*. Each test unmounts its own, and
# the suite sweeps leftovers of a crashed run when it starts; `sweep` runs once
# more when a run ends (the scripts install it as an EXIT trap), however it
# ends, so no mount outlives a crash.
sweep() {
  awk '$5 ~ "^/tmp/secretfs-test-" && $0 ~ / - fuse/ {print $5}' /proc/self/mountinfo |
    while read -r m; do fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  # and any resolver daemon a failed test left listening under the prefix
  pkill -f 'secretfs resolver --listen /tmp/secretfs-test-' 2>/dev/null || true
  # and the mount helper link the operations tests put where mount(8) looks
  # (into a build directory), unless another run is using it now
  flock -n /tmp/secretfs-test-mount-helper.lock sh -c \
    'l=/sbin/mount.secretfs; [ -L "$l" ] && readlink "$l" | grep -q "/\.build[^/]*/.*secretfs$" && rm -f "$l"' || true
}
