import CFuse
import Glibc
import SecretfsNames
import SecretfsStore

// The libfuse low-level callbacks. Each one recovers the SecretFilesystem from
// the request's userdata, calls the matching method, and turns the result into
// exactly one reply. Callbacks are non-capturing C function pointers, so they
// live here as top-level functions (never in main.swift: top-level code there
// is main-actor isolated and traps on FUSE threads).

private func filesystem(_ req: fuse_req_t?) -> SecretFilesystem {
    Unmanaged<SecretFilesystem>.fromOpaque(fuse_req_userdata(req)!).takeUnretainedValue()
}

private func caller(_ req: fuse_req_t?) -> Caller {
    let ctx = fuse_req_ctx(req)!.pointee
    return Caller(uid: ctx.uid, gid: ctx.gid, pid: ctx.pid, supplementaryGroups: {
        var groups = [gid_t](repeating: 0, count: 64)
        var n = fuse_req_getgroups(req, Int32(groups.count), &groups)
        if n > Int32(groups.count) {
            groups = [gid_t](repeating: 0, count: Int(n))
            n = fuse_req_getgroups(req, n, &groups)
        }
        return n > 0 ? Array(groups.prefix(Int(n))) : []
    })
}

/// A name from the kernel. Longer than any name can be (255 bytes):
/// ENAMETOOLONG, as on a disk filesystem (FUSE passes names up to 1024 bytes
/// and leaves the limit to the filesystem).
private func name(_ p: UnsafePointer<CChar>?) throws(Errno) -> String {
    guard let p else { return "" }
    guard strnlen(p, Names.maximumLength + 1) <= Names.maximumLength else { throw .nameTooLong }
    // Invalid UTF-8 becomes U+FFFD, which no valid (ASCII) name contains, so
    // such names are refused as invalid rather than confused with another.
    return String(cString: p)
}

private func statBuffer(_ a: Attributes) -> stat {
    var st = stat()
    st.st_ino = UInt(a.ino)
    st.st_mode = a.mode
    st.st_nlink = UInt(a.links)
    st.st_uid = a.uid
    st.st_gid = a.gid
    st.st_size = 0          // the length of a value never leaks
    st.st_blocks = 0
    st.st_blksize = 4096
    let ts = timespec(tv_sec: Int(a.modified.seconds), tv_nsec: Int(a.modified.subsecondNanoseconds))
    st.st_atim = ts
    st.st_mtim = ts
    st.st_ctim = ts
    return st
}

private func entry(_ a: Attributes, timeout: Double) -> fuse_entry_param {
    var e = fuse_entry_param()
    e.ino = a.ino
    e.generation = 1
    e.attr = statBuffer(a)
    e.attr_timeout = timeout
    e.entry_timeout = timeout
    return e
}

private func replyError(_ req: fuse_req_t?, _ e: Errno) {
    fuse_reply_err(req, e.code)
}

private func replyAttr(_ req: fuse_req_t?, _ a: Attributes, _ fs: SecretFilesystem) {
    var st = statBuffer(a)
    fuse_reply_attr(req, &st, a.cacheable ? fs.options.cacheTimeout : 0)
}

/// The operation table handed to `fuse_session_new`.
func makeOperations() -> fuse_lowlevel_ops {
    var ops = fuse_lowlevel_ops()

    ops.`init` = { _, conn in
        guard let conn else { return }
        // Writeback caching would make the kernel read write-only files back
        // to merge partial pages: keep it off, whatever the kernel offers.
        conn.pointee.want &= ~UInt32(FUSE_CAP_WRITEBACK_CACHE)
        // Listings carry attributes so `ls -l` needs no LOOKUP per name.
        if conn.pointee.capable & UInt32(FUSE_CAP_READDIRPLUS) != 0 {
            conn.pointee.want |= UInt32(FUSE_CAP_READDIRPLUS)
        }
    }

    ops.lookup = { req, parent, cname in
        let fs = filesystem(req)
        do throws(Errno) {
            let a = try fs.lookup(parent: parent, name: name(cname), caller: caller(req))
            var e = entry(a, timeout: a.cacheable ? fs.options.cacheTimeout : 0)
            fuse_reply_entry(req, &e)
        } catch {
            if error == .noEntry {
                // A negative entry with timeout 0: the name is not cached as absent.
                var e = fuse_entry_param()
                fuse_reply_entry(req, &e)
            } else {
                replyError(req, error)
            }
        }
    }

    ops.forget = { req, ino, nlookup in
        filesystem(req).forget(ino: ino, count: nlookup)
        fuse_reply_none(req)
    }

    ops.forget_multi = { req, count, forgets in
        let fs = filesystem(req)
        for i in 0..<count {
            let f = forgets![i]
            fs.forget(ino: f.ino, count: f.nlookup)
        }
        fuse_reply_none(req)
    }

    ops.getattr = { req, ino, _ in
        let fs = filesystem(req)
        do throws(Errno) { replyAttr(req, try fs.getattr(ino: ino, caller: caller(req)), fs) } catch { replyError(req, error) }
    }

    ops.setattr = { req, ino, attr, toSet, fi in
        let fs = filesystem(req)
        var change = SecretFilesystem.AttributeChange()
        let st = attr!.pointee
        if toSet & FUSE_SET_ATTR_MODE != 0 { change.mode = st.st_mode }
        if toSet & FUSE_SET_ATTR_UID != 0 { change.uid = st.st_uid }
        if toSet & FUSE_SET_ATTR_GID != 0 { change.gid = st.st_gid }
        if toSet & FUSE_SET_ATTR_SIZE != 0 { change.size = Int64(st.st_size) }
        if toSet & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_ATIME_NOW | FUSE_SET_ATTR_MTIME_NOW) != 0 {
            change.setsTimes = true
        }
        do throws(Errno) {
            let a = try fs.setattr(ino: ino, change: change, fh: fi.map { $0.pointee.fh }, caller: caller(req))
            replyAttr(req, a, fs)
        } catch { replyError(req, error) }
    }

    ops.mknod = { req, parent, cname, mode, _ in
        let fs = filesystem(req)
        do throws(Errno) {
            guard mode & S_IFMT == S_IFREG else { try fs.refuseType(caller: caller(req), operation: "mknod") }
            // mknod(S_IFREG) is `create` without an open file: commit an empty value.
            let (a, fh, _) = try fs.create(parent: parent, name: name(cname), flags: O_WRONLY | O_EXCL, caller: caller(req))
            defer { fs.release(fh: fh) }
            try fs.fsync(fh: fh)
            var e = entry(a, timeout: a.cacheable ? fs.options.cacheTimeout : 0)
            fuse_reply_entry(req, &e)
        } catch { replyError(req, error) }
    }

    ops.mkdir = { req, _, _, _ in
        do throws(Errno) { try filesystem(req).refuseType(caller: caller(req), operation: "mkdir") } catch { replyError(req, error) }
    }
    ops.symlink = { req, _, _, _ in
        do throws(Errno) { try filesystem(req).refuseType(caller: caller(req), operation: "symlink") } catch { replyError(req, error) }
    }
    ops.link = { req, _, _, _ in
        do throws(Errno) { try filesystem(req).refuseType(caller: caller(req), operation: "link") } catch { replyError(req, error) }
    }

    ops.unlink = { req, parent, cname in
        do throws(Errno) {
            try filesystem(req).unlink(parent: parent, name: name(cname), caller: caller(req))
            fuse_reply_err(req, 0)
        } catch { replyError(req, error) }
    }

    ops.rmdir = { req, parent, cname in
        do throws(Errno) {
            try filesystem(req).rmdir(parent: parent, name: name(cname), caller: caller(req))
            fuse_reply_err(req, 0)
        } catch { replyError(req, error) }
    }

    ops.rename = { req, parent, cname, newParent, cnewName, flags in
        do throws(Errno) {
            try filesystem(req).rename(parent: parent, name: name(cname), newParent: newParent,
                                       newName: name(cnewName), flags: flags, caller: caller(req))
            fuse_reply_err(req, 0)
        } catch { replyError(req, error) }
    }

    ops.open = { req, ino, fi in
        let fs = filesystem(req)
        do throws(Errno) {
            let fh = try fs.open(ino: ino, flags: fi!.pointee.flags, caller: caller(req))
            fi!.pointee.fh = fh
            // direct_io: no page cache, so written plaintext never sits in the
            // kernel's cache and reads always come here (and get nothing).
            fi!.pointee.direct_io = 1
            fi!.pointee.keep_cache = 0
            if fuse_reply_open(req, fi) != 0 { fs.release(fh: fh) }
        } catch { replyError(req, error) }
    }

    ops.create = { req, parent, cname, mode, fi in
        let fs = filesystem(req)
        do throws(Errno) {
            guard mode & S_IFMT == S_IFREG || mode & S_IFMT == 0 else {
                try fs.refuseType(caller: caller(req), operation: "create")
            }
            let (a, fh, cacheable) = try fs.create(parent: parent, name: name(cname), flags: fi!.pointee.flags, caller: caller(req))
            fi!.pointee.fh = fh
            fi!.pointee.direct_io = 1
            fi!.pointee.keep_cache = 0
            var e = entry(a, timeout: a.cacheable ? fs.options.cacheTimeout : 0)
            if !cacheable { e.entry_timeout = 0 }
            if fuse_reply_create(req, &e, fi) != 0 { fs.release(fh: fh) }
        } catch { replyError(req, error) }
    }

    ops.read = { req, _, _, _, fi in
        // Write-only: a read succeeds and returns nothing, always.
        do throws(Errno) {
            try filesystem(req).checkHandle(fh: fi!.pointee.fh)
            fuse_reply_buf(req, nil, 0)
        } catch { replyError(req, error) }
    }

    ops.write = { req, _, buf, size, off, fi in
        do throws(Errno) {
            let n = try filesystem(req).write(fh: fi!.pointee.fh, data: UnsafeRawBufferPointer(start: buf, count: size),
                                              offset: Int64(off), flags: fi!.pointee.flags)
            fuse_reply_write(req, n)
        } catch { replyError(req, error) }
    }

    ops.flush = { req, _, fi in
        do throws(Errno) {
            try filesystem(req).flush(fh: fi!.pointee.fh)
            fuse_reply_err(req, 0)
        } catch { replyError(req, error) }
    }

    ops.fsync = { req, _, _, fi in
        do throws(Errno) {
            try filesystem(req).fsync(fh: fi!.pointee.fh)
            fuse_reply_err(req, 0)
        } catch { replyError(req, error) }
    }

    ops.release = { req, _, fi in
        filesystem(req).release(fh: fi!.pointee.fh)
        fuse_reply_err(req, 0)
    }

    ops.opendir = { req, ino, fi in
        do throws(Errno) {
            fi!.pointee.fh = try filesystem(req).opendir(ino: ino, caller: caller(req))
            fuse_reply_open(req, fi)
        } catch { replyError(req, error) }
    }

    ops.readdir = { req, _, size, off, fi in
        replyDirectory(req, size: size, offset: off, fh: fi!.pointee.fh, plus: false)
    }

    ops.readdirplus = { req, _, size, off, fi in
        replyDirectory(req, size: size, offset: off, fh: fi!.pointee.fh, plus: true)
    }

    ops.releasedir = { req, _, fi in
        filesystem(req).releasedir(fh: fi!.pointee.fh)
        fuse_reply_err(req, 0)
    }

    ops.statfs = { req, _ in
        do throws(Errno) {
            let s = try filesystem(req).statfs(caller: caller(req))
            var sv = statvfs()
            sv.f_bsize = 4096
            sv.f_frsize = 4096
            sv.f_files = UInt(s.files)
            sv.f_namemax = UInt(s.nameMax)
            fuse_reply_statfs(req, &sv)
        } catch { replyError(req, error) }
    }

    ops.access = { req, ino, mask in
        do throws(Errno) {
            try filesystem(req).access(ino: ino, mask: mask, caller: caller(req))
            fuse_reply_err(req, 0)
        } catch { replyError(req, error) }
    }

    // Extended attributes: none exist. getxattr and listxattr are left
    // unimplemented on purpose: the kernel then learns once (ENOSYS) that
    // there are none, instead of asking for security.capability on every
    // open(O_TRUNC) and for ACLs on every `ls -l`. Callers see EOPNOTSUPP.
    // setxattr/removexattr still answer, so callers without access get EACCES.
    ops.setxattr = { req, ino, _, _, _, _ in
        do throws(Errno) {
            try filesystem(req).access(ino: ino, mask: F_OK, caller: caller(req))
            replyError(req, .notSupported)
        } catch { replyError(req, error) }
    }
    ops.removexattr = { req, ino, _ in
        do throws(Errno) {
            try filesystem(req).access(ino: ino, mask: F_OK, caller: caller(req))
            replyError(req, .noData)
        } catch { replyError(req, error) }
    }
    return ops
}

private func replyDirectory(_ req: fuse_req_t?, size: Int, offset: off_t, fh: UInt64, plus: Bool) {
    let fs = filesystem(req)
    var buffer = [CChar](repeating: 0, count: size)
    var used = 0
    do throws(Errno) {
        try fs.readdir(fh: fh, offset: Int64(offset), plus: plus, caller: caller(req)) { item in
            buffer.withUnsafeMutableBufferPointer { buf in
                let remaining = size - used
                let needed: Int
                if plus {
                    var e = entry(item.attributes, timeout: item.attributes.cacheable ? fs.options.cacheTimeout : 0)
                    needed = fuse_add_direntry_plus(req, buf.baseAddress! + used, remaining, item.name, &e, off_t(item.nextOffset))
                } else {
                    var st = statBuffer(item.attributes)
                    needed = fuse_add_direntry(req, buf.baseAddress! + used, remaining, item.name, &st, off_t(item.nextOffset))
                }
                guard needed <= remaining else { return false }
                used += needed
                return true
            }
        }
        buffer.withUnsafeBufferPointer { _ = fuse_reply_buf(req, $0.baseAddress, used) }
    } catch { replyError(req, error) }
}
