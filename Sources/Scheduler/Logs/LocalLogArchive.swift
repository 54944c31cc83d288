import Foundation
import KilnCore
#if canImport(Glibc)
import Glibc
#endif

/// The log archive in a folder (`kiln scheduler --log-archive DIR`, by default
/// `<data-dir>/log-archive`; docs/logs.md): one gzip file per build, at
/// `DIR/<first 7 characters of the id>/<id>.json.gz` (build ids begin with their time, so a
/// folder holds about 17 hours of builds and a backup can copy old folders once).
///
/// Several schedulers on one machine (or on machines that mount one shared folder) may use
/// one folder at once: a file is written whole under a temporary name, synced to disk, and
/// renamed over the old one, so a reader sees the old archive or the new one, never part of
/// either. Files are mode 0600 and folders 0700: logs are shown to a project's members only.
///
/// A file holds a `LogArchiveFile`: `{"format":1,"build":…,"lines":[…]}`, gzipped, with the
/// build's id, so a file copied under another build's name is refused instead of shown. Read
/// one with `zcat FILE | jq -r '.lines[]'`.
public struct LocalLogArchive: LogArchive, CustomStringConvertible {
    public let directory: URL

    public var description: String { "the log archive at \(directory.path)" }

    static let maxInflatedBytes = LogArchiveFile.maxInflatedBytes

    public init(directory: URL) {
        self.directory = directory.standardizedFileURL
    }

    /// The file of `build`; refuses an id that is not a build id (it becomes a file name).
    func file(of build: String) throws -> (folder: URL, file: URL) {
        guard BuildID.isValid(build) else {
            throw KilnError.invalid("'\(Validation.printable(String(build.prefix(80))))' is not a build id (lower-case letters, digits and '-', at most 64): no archive is kept under it")
        }
        let folder = directory.appendingPathComponent(String(build.prefix(7)), isDirectory: true)
        return (folder, folder.appendingPathComponent(build + ".json.gz"))
    }

    typealias File = LogArchiveFile

    public func store(build: String, lines: [String]) async throws {
        let (folder, file) = try self.file(of: build)
        let bytes = try LogArchiveFile.encode(build: build, lines: lines)
        let directory = self.directory
        try await blocking {
            try LocalLogArchive.makeFolder(directory, withParents: true)
            try LocalLogArchive.makeFolder(folder, withParents: false)
            try LocalLogArchive.writeDurably(bytes, to: file, in: folder)
        }
    }

    public func read(build: String) async throws -> [String]? {
        let (_, file) = try self.file(of: build)
        guard let bytes = try await blocking({ try LocalLogArchive.readIfExists(file) }) else { return nil }
        do {
            return try LogArchiveFile.decode(bytes, build: build)
        } catch LogArchiveFile.Refusal.corrupt(let why) {
            throw KilnError.internalError("the log archive's file \(file.path) is corrupt (\(why)): restore it from a backup of the archive folder, or remove it and the build's record keeps saying its log was archived (docs/logs.md)")
        } catch LogArchiveFile.Refusal.foreign(let what) {
            throw KilnError.internalError("the log archive's file \(file.path) holds \(what), not build \(build)'s: was it copied under another name? (docs/logs.md)")
        }
    }

    public func delete(build: String) async throws {
        let (folder, file) = try self.file(of: build)
        try await blocking {
            if unlink(file.path) != 0, errno != ENOENT {
                throw LocalLogArchive.failure("could not remove", file, errno)
            }
            // The folder goes with its last file (its next build makes it again).
            _ = rmdir(folder.path)
        }
    }

    // MARK: files

    /// The temporary files (`.<id>.json.gz.<uuid>.tmp`) of writes a killed scheduler never
    /// renamed, older than `age` (another scheduler sharing the folder may be writing one now).
    public func removeLeftovers(olderThan age: TimeInterval) async -> Int {
        let directory = self.directory
        return (try? await blocking {
            let fm = FileManager.default
            let limit = Date().addingTimeInterval(-age)
            var removed = 0
            for folder in (try? fm.contentsOfDirectory(atPath: directory.path)) ?? [] where folder.count == 7 {
                let path = directory.appendingPathComponent(folder).path
                for name in (try? fm.contentsOfDirectory(atPath: path)) ?? [] where name.hasPrefix(".") && name.hasSuffix(".tmp") {
                    let file = path + "/" + name
                    guard let modified = (try? fm.attributesOfItem(atPath: file))?[.modificationDate] as? Date, modified < limit else { continue }
                    if (try? fm.removeItem(atPath: file)) != nil { removed += 1 }
                }
            }
            return removed
        }) ?? 0
    }

    private static func makeFolder(_ url: URL, withParents: Bool) throws {
        if withParents, !FileManager.default.fileExists(atPath: url.path) {
            // Its parents as well (a first start with the default under --data-dir).
            try? FileManager.default.createDirectory(at: url, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
        if mkdir(url.path, 0o700) != 0, errno != EEXIST { throw failure("could not make the folder", url, errno) }
        var s = stat()
        guard stat(url.path, &s) == 0 else { throw failure("could not read", url, errno) }
        guard (s.st_mode & S_IFMT) == S_IFDIR else {
            throw KilnError.unavailable("the log archive cannot write: \(url.path) is not a folder (check --log-archive; docs/logs.md)")
        }
    }

    /// Writes `bytes` under a temporary name in `folder`, syncs it, renames it to `file` and
    /// syncs the folder (the rename is durable too): the file is whole or absent after a crash.
    private static func writeDurably(_ bytes: [UInt8], to file: URL, in folder: URL) throws {
        let temporary = folder.appendingPathComponent(".\(file.lastPathComponent).\(UUID().uuidString).tmp")
        let fd = open(temporary.path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw failure("could not create", temporary, errno) }
        var done = false
        defer {
            if !done { _ = unlink(temporary.path) }
        }
        do {
            defer { close(fd) }
            var written = 0
            while written < bytes.count {
                let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + written, $0.count - written) }
                if n < 0 {
                    if errno == EINTR { continue }
                    throw failure("could not write", temporary, errno)
                }
                written += n
            }
            guard fsync(fd) == 0 else { throw failure("could not sync", temporary, errno) }
        }
        guard rename(temporary.path, file.path) == 0 else { throw failure("could not rename into place", file, errno) }
        done = true
        let dir = open(folder.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            _ = fsync(dir)
            close(dir)
        }
    }

    /// The file's bytes, or nil if there is no such file.
    private static func readIfExists(_ file: URL) throws -> [UInt8]? {
        let fd = open(file.path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC)
        guard fd >= 0 else {
            if errno == ENOENT { return nil }
            throw failure("could not open", file, errno)
        }
        defer { close(fd) }
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        while true {
            let n = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw failure("could not read", file, errno)
            }
            if n == 0 { return out }
            out.append(contentsOf: buffer[0..<n])
            if out.count > maxInflatedBytes {
                throw KilnError.internalError("the log archive's file \(file.path) is larger than any archive Kiln writes: remove it or restore it from a backup (docs/logs.md)")
            }
        }
    }

    private static func failure(_ what: String, _ url: URL, _ code: Int32) -> KilnError {
        KilnError.unavailable("the log archive \(what) \(url.path): \(String(cString: strerror(code))) (check --log-archive and the folder's disk; docs/logs.md)")
    }

    /// Runs file work off the concurrency pool's threads (a sync of a large file may take a while).
    private func blocking<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
        try await withCheckedThrowingContinuation { continuation in
            DispatchQueue.global(qos: .utility).async {
                continuation.resume(with: Result { try work() })
            }
        }
    }
}
