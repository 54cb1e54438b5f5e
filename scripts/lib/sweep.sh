# Sourced by scripts/test and scripts/sanitize (not run on its own).
#
# Mount tests live under /tmp/secretfs-test-*. Each test unmounts its own, and
# the suite sweeps leftovers of a crashed run when it starts; `sweep` runs once
# more when a run ends (the scripts install it as an EXIT trap), however it
# ends, so no mount outlives a crash.
sweep() {
  # Fixture roots are /tmp/secretfs-test-PID-XXXXXX (PID: the test runner):
  # only what belongs to a runner that is gone is swept, so two runs on one
  # machine leave each other alone.
  gone() {
    local pid
    pid=$(printf '%s\n' "$1" | sed -n 's|.*/tmp/secretfs-test-\([0-9][0-9]*\)-.*|\1|p' | head -1)
    [ -z "$pid" ] || ! kill -0 "$pid" 2>/dev/null
  }
  awk '$5 ~ "^/tmp/secretfs-test-" && $0 ~ / - fuse/ {print $5}' /proc/self/mountinfo |
    while read -r m; do
      gone "$m" || continue
      fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
    done
  # and any resolver daemon a failed test left listening under the prefix
  pgrep -af 'secretfs resolver --listen /tmp/secretfs-test-' 2>/dev/null |
    while read -r pid cmd; do gone "$cmd" && kill "$pid" 2>/dev/null; done || true
  # and the mount helper link the operations tests put where mount(8) looks
  # (into a build directory), unless another run is using it now
  flock -n /tmp/secretfs-test-mount-helper.lock sh -c \
    'l=/sbin/mount.secretfs; [ -L "$l" ] && readlink "$l" | grep -q "/\.build[^/]*/.*secretfs$" && rm -f "$l"' || true
}
