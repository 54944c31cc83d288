import CLibGit2
import Foundation
import KilnCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

// libgit2 plumbing behind GitMirror: the C callbacks' payload, error conversion, string
// arrays, opening the mirror, and the file lock that serialises fetches.

/// What the C callbacks reach through their payload pointer.
final class FetchContext {
    let cancel: CancelFlag?
    let progress: (@Sendable (FetchProgress) -> Void)?
    let authenticator: GitAuthenticator
    init(cancel: CancelFlag?, progress: (@Sendable (FetchProgress) -> Void)?, authenticator: GitAuthenticator) {
        self.cancel = cancel
        self.progress = progress
        self.authenticator = authenticator
    }
}

/// Turns a libgit2 return code into a `GitError` carrying `git_error_last()`.
func check(_ code: Int32, _ operation: @autoclosure () -> String, context: FetchContext? = nil) throws {
    guard code < 0 else { return }
    if context?.cancel?.isCancelled == true {
        throw GitError(.cancelled, operation(), "cancelled", code: code)
    }
    throw lastError(code, operation())
}

func lastError(_ code: Int32, _ operation: String) -> GitError {
    var message = "libgit2 error \(code)"
    if let last = git_error_last(), let text = last.pointee.message {
        message = String(cString: text)
    }
    let kind: GitError.Kind
    switch code {
    case GIT_ENOTFOUND.rawValue: kind = .notFound
    case GIT_EAMBIGUOUS.rawValue: kind = .ambiguous
    default: kind = .libgit2
    }
    return GitError(kind, operation, message, code: code)
}

func withStrArray<R>(_ strings: [String], _ body: (inout git_strarray) throws -> R) throws -> R {
    let pointers = strings.map { strdup($0) }
    defer { pointers.forEach { free($0) } }
    var array = pointers
    return try array.withUnsafeMutableBufferPointer { buffer in
        var strarray = git_strarray(strings: buffer.baseAddress, count: buffer.count)
        return try body(&strarray)
    }
}

extension GitMirror {
    func openExisting() throws -> OpaquePointer {
        var repo: OpaquePointer?
        let code = git_repository_open_bare(&repo, path.path)
        if code == GIT_ENOTFOUND.rawValue {
            throw GitError(.notFound, "open mirror \(path.path)", "there is no mirror yet: fetch first")
        }
        try check(code, "open mirror \(path.path)")
        return repo!
    }

    func openOrCreate() throws -> OpaquePointer {
        var repo: OpaquePointer?
        let fm = FileManager.default
        let exists = fm.fileExists(atPath: path.path)
        let empty = exists && ((try? fm.contentsOfDirectory(atPath: path.path).isEmpty) ?? false)
        if exists && !empty {
            try check(git_repository_open_bare(&repo, path.path), "open mirror \(path.path)")
            return repo!
        }
        do {
            try fm.createDirectory(at: path.deletingLastPathComponent(), withIntermediateDirectories: true)
        } catch {
            throw GitError(.io, "create mirror \(path.path)", error.localizedDescription)
        }
        try check(git_repository_init(&repo, path.path, 1), "create mirror \(path.path)")
        return repo!
    }

    /// The remote "origin", created or re-pointed at `url`.
    func originRemote(_ repo: OpaquePointer) throws -> OpaquePointer {
        var remote: OpaquePointer?
        let code = git_remote_lookup(&remote, repo, "origin")
        if code == GIT_ENOTFOUND.rawValue {
            try check(git_remote_create_with_fetchspec(&remote, repo, "origin", url, GitMirror.refspecs[0]), "add remote origin \(RepositoryEndpoint.redacted(url))")
            try check(git_remote_add_fetch(repo, "origin", GitMirror.refspecs[1]), "add the tags refspec")
            return remote!
        }
        try check(code, "read remote origin")
        let current = git_remote_url(remote).map { String(cString: $0) }
        if current == url { return remote! }
        git_remote_free(remote)
        try check(git_remote_set_url(repo, "origin", url), "set remote origin to \(RepositoryEndpoint.redacted(url))")
        remote = nil
        try check(git_remote_lookup(&remote, repo, "origin"), "read remote origin")
        return remote!
    }

    static func defaultBranch(of remote: OpaquePointer?) -> String? {
        var buf = git_buf()
        defer { git_buf_dispose(&buf) }
        guard git_remote_default_branch(&buf, remote) == 0, let ptr = buf.ptr else { return nil }
        let name = String(cString: ptr)
        return name.hasPrefix("refs/heads/") ? name : nil
    }

    static func oidString(_ oid: UnsafePointer<git_oid>) -> String {
        var out = [CChar](repeating: 0, count: 40)
        git_oid_fmt(&out, oid)
        return String(decoding: out.map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    /// Finds a commit by full or abbreviated sha, peeling tag objects.
    static func lookupCommit(_ repo: OpaquePointer, _ sha: String) throws -> (commit: OpaquePointer, sha: String) {
        let operation = "find commit \(sha)"
        guard (4...40).contains(sha.count), sha.allSatisfy(\.isHexDigit) else {
            throw GitError(.invalidArgument, operation, "a commit must be 4 to 40 hex digits")
        }
        var oid = git_oid()
        try check(git_oid_fromstrn(&oid, sha, sha.utf8.count), operation)
        var object: OpaquePointer?
        let code = git_object_lookup_prefix(&object, repo, &oid, sha.utf8.count, GIT_OBJECT_ANY)
        if code == GIT_ENOTFOUND.rawValue {
            throw GitError(.notFound, operation, "no such commit in the mirror (was it pushed, and fetched?)", code: code)
        }
        if code == GIT_EAMBIGUOUS.rawValue {
            throw GitError(.ambiguous, operation, "the abbreviated sha matches more than one object: give more digits", code: code)
        }
        try check(code, operation)
        defer { git_object_free(object) }
        var peeled: OpaquePointer?
        try check(git_object_peel(&peeled, object, GIT_OBJECT_COMMIT), "\(operation): it is not a commit")
        return (peeled!, oidString(git_object_id(peeled)))
    }

    static func resolveRef(_ repo: OpaquePointer, _ ref: String) throws -> String {
        let operation = "resolve ref '\(ref)'"
        if ref.isEmpty || ref.hasPrefix("-") {
            throw GitError(.invalidArgument, operation, "not a ref name")
        }
        let candidates: [String]
        if ref == "HEAD" || ref.hasPrefix("refs/") {
            candidates = [ref]
        } else {
            candidates = ["refs/heads/\(ref)", "refs/tags/\(ref)"]
        }
        var found: [(name: String, sha: String)] = []
        for name in candidates {
            var valid: Int32 = 0
            guard git_reference_name_is_valid(&valid, name) == 0, valid == 1 else {
                throw GitError(.invalidArgument, operation, "'\(name)' is not a valid ref name")
            }
            var reference: OpaquePointer?
            let code = git_reference_lookup(&reference, repo, name)
            if code == GIT_ENOTFOUND.rawValue { continue }
            try check(code, operation)
            defer { git_reference_free(reference) }
            var object: OpaquePointer?
            let peelCode = git_reference_peel(&object, reference, GIT_OBJECT_COMMIT)
            if peelCode == GIT_ENOTFOUND.rawValue { continue }  // HEAD of a mirror whose default branch is gone
            try check(peelCode, "\(operation): it does not point at a commit")
            defer { git_object_free(object) }
            found.append((name, oidString(git_object_id(object))))
        }
        guard let first = found.first else {
            throw GitError(.notFound, operation, "no branch or tag named '\(ref)' in the mirror")
        }
        if found.contains(where: { $0.sha != first.sha }) {
            throw GitError(.ambiguous, operation, "both \(found.map(\.name).joined(separator: " and ")) exist and differ: give the full ref name")
        }
        return first.sha
    }
}

/// An exclusive `flock` on a file, held until `unlock()`.
struct FileLock {
    let fd: Int32

    init(path: String) throws {
        try? FileManager.default.createDirectory(
            atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        fd = open(path, O_CREAT | O_RDWR | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw GitError(.io, "lock \(path)", String(cString: strerror(errno))) }
        while flock(fd, LOCK_EX) != 0 {
            if errno == EINTR { continue }
            let message = String(cString: strerror(errno))
            close(fd)
            throw GitError(.io, "lock \(path)", message)
        }
    }

    func unlock() {
        flock(fd, LOCK_UN)
        close(fd)
    }
}
