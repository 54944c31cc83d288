import Foundation
import Processes
#if canImport(Glibc)
import Glibc
#endif

/// Measures folders and filesystems for `DiskKeeper`. Blocking: call from a thread of its
/// own (`blocking`).
enum DiskUsage {
    /// A filesystem as `statvfs` sees it.
    struct Filesystem: Sendable, Equatable {
        /// Bytes an unprivileged writer may still use (`f_bavail`): what a build gets.
        var free: Int64
        var size: Int64
        /// The device of the path, to tell two paths on one filesystem.
        var device: UInt64
    }

    /// The filesystem `path` lies on, or nil when it cannot be read (the path does not exist).
    static func filesystem(of path: String) -> Filesystem? {
        var vfs = statvfs()
        var st = stat()
        guard statvfs(path, &vfs) == 0, stat(path, &st) == 0 else { return nil }
        let unit = Int64(vfs.f_frsize == 0 ? vfs.f_bsize : vfs.f_frsize)
        return Filesystem(free: Int64(vfs.f_bavail) * unit, size: Int64(vfs.f_blocks) * unit, device: UInt64(st.st_dev))
    }

    /// The bytes the tree at `path` takes on disk, as `du -s -x -B1` counts them: allocated
    /// blocks (a sparse file counts what it holds, not its length), each hard-linked file once,
    /// links not followed, other filesystems mounted inside not entered. A build writes these
    /// trees (its cache), so nothing it can make may stop the count: coreutils' `du` walks with
    /// fts (Swift's Glibc module does not offer it), which goes deeper than any path length, and
    /// counts what it can read. 0 when `path` does not exist or `du` is missing.
    static func bytes(of path: String) -> Int64 {
        guard FileManager.default.fileExists(atPath: path), let du = ManagedProcess.which("du"),
              let result = try? Spawn.run(du, ["-s", "-x", "-B1", "--", path], discardStderr: true) else { return 0 }
        // Non-zero when some entry could not be read; the total of the rest is still printed.
        let text = String(decoding: result.output, as: UTF8.self)
        return Int64(text.prefix { $0.isNumber }) ?? 0
    }
}
