// Makes Synchronization.Mutex visible to ThreadSanitizer. Used only by
// `scripts/sanitize thread`, which builds this file into a shared library
// and LD_PRELOADs it; nothing in the project links it.
//
// Why: on Linux, Mutex.withLock inlines the uncontended path (an atomic
// compare-exchange on the lock word, which TSan sees), but a contended lock or
// unlock calls `_MutexHandle._lockSlow` / `_unlockSlow` in
// libswiftSynchronization.so. Those are not instrumented and hand the lock over
// with FUTEX_LOCK_PI / FUTEX_UNLOCK_PI system calls, in which the kernel, not
// user code, writes the lock word. TSan then sees no happens-before edge
// between the thread that released the lock and the one that got it, and
// reports every access to data guarded by a contended Mutex as a "data race"
// or "Swift access race" (seen here in SecretFilesystem, UnixSocketListener,
// SocketConnection, BufferPool: all of them inside withLock). A two-thread
// program that increments a counter under Mutex, with a sleep inside the lock
// to force contention, reproduces it with no project code involved.
//
// A suppression cannot fix that narrowly: the reported stacks hold only the
// code inside the lock (withLock is transparent and inlined), so it would have
// to name project functions and would hide real races there too. Instead this
// tells TSan what the mutex does: after the real slow lock returns (or a slow
// try-lock succeeds) it calls __tsan_acquire on the lock word, and before the
// real slow unlock it calls __tsan_release on it. That is the same address the
// inlined fast path uses atomically, so fast and slow paths pair up. An access
// made outside the lock is still reported (checked with the same two-thread
// program and one unlocked increment).
//
// The symbols interpose those of libswiftSynchronization.so (mangled names of
// Swift 6.3; `nm -D` on the library lists them) and forward to the originals
// found with dlsym(RTLD_NEXT). The handle (`self`, passed indirectly: the lock
// word is its only stored property) arrives in the Swift self register, which
// clang's swiftcall convention spells swift_context. The __tsan_* functions
// are weak: a process without TSan (the shell, python, node under the test
// run) gets the plain forwarding.
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void __tsan_acquire(void *addr) __attribute__((weak));
void __tsan_release(void *addr) __attribute__((weak));

#define LOCK_SLOW "$s15Synchronization12_MutexHandleV9_lockSlowyys6UInt32VF"
#define TRYLOCK_SLOW "$s15Synchronization12_MutexHandleV12_tryLockSlowSbyF"
#define UNLOCK_SLOW "$s15Synchronization12_MutexHandleV11_unlockSlowyyF"

#define SWIFTCALL __attribute__((swiftcall))
#define SWIFTSELF __attribute__((swift_context))

typedef SWIFTCALL void (*lock_slow_fn)(uint32_t, SWIFTSELF void *);
typedef SWIFTCALL bool (*try_lock_slow_fn)(SWIFTSELF void *);
typedef SWIFTCALL void (*unlock_slow_fn)(SWIFTSELF void *);

static void *original(const char *name) {
  void *f = dlsym(RTLD_NEXT, name);
  if (f == NULL) {
    // A toolchain whose Synchronization renamed these: fail loudly rather
    // than hang or let the sanitizer run pretend to have checked something.
    static const char msg[] = "tsan-mutex: libswiftSynchronization.so lacks a slow-path symbol this shim expects\n";
    fwrite(msg, 1, sizeof msg - 1, stderr);
    abort();
  }
  return f;
}

SWIFTCALL void lock_slow(uint32_t self_id, SWIFTSELF void *handle) __asm__(LOCK_SLOW);
SWIFTCALL void lock_slow(uint32_t self_id, SWIFTSELF void *handle) {
  static lock_slow_fn real;
  if (real == NULL) real = (lock_slow_fn)original(LOCK_SLOW);
  real(self_id, handle);
  if (__tsan_acquire) __tsan_acquire(handle);
}

SWIFTCALL bool try_lock_slow(SWIFTSELF void *handle) __asm__(TRYLOCK_SLOW);
SWIFTCALL bool try_lock_slow(SWIFTSELF void *handle) {
  static try_lock_slow_fn real;
  if (real == NULL) real = (try_lock_slow_fn)original(TRYLOCK_SLOW);
  bool locked = real(handle);
  if (locked && __tsan_acquire) __tsan_acquire(handle);
  return locked;
}

SWIFTCALL void unlock_slow(SWIFTSELF void *handle) __asm__(UNLOCK_SLOW);
SWIFTCALL void unlock_slow(SWIFTSELF void *handle) {
  static unlock_slow_fn real;
  if (real == NULL) real = (unlock_slow_fn)original(UNLOCK_SLOW);
  if (__tsan_release) __tsan_release(handle);
  real(handle);
}
