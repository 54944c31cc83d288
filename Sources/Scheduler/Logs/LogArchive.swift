import Foundation
import KilnCore

/// Where a build's log goes when it leaves etcd (issue 14; docs/logs.md): the whole log of an
/// ended build, compressed, readable by every scheduler. The local default is a folder of the
/// scheduler's data dir (`LocalLogArchive`); a shared store (the registry's blob storage, an
/// S3-compatible store) can take its place behind this protocol.
///
/// Rules for an implementation: `store` returns only once the archive is durable (the caller
/// deletes the etcd chunks after it returns); a second `store` of the same build replaces the
/// first whole (a later pipeline run adds lines); `read` never returns part of an archive;
/// `delete` of a build with no archive is not an error.
public protocol LogArchive: Sendable {
    /// Stores the whole log of `build` (every attempt's lines, then every pipeline run's, in
    /// the order a reader sees them), replacing an earlier archive of it.
    func store(build: String, lines: [String]) async throws
    /// The archived log of `build`, or nil when it has none.
    func read(build: String) async throws -> [String]?
    /// Removes the archive of `build` (retention).
    func delete(build: String) async throws
    /// Removes what writes that never finished left behind (a scheduler killed in the middle
    /// of a `store`) once it is older than `age`, so that a writer still at work keeps its
    /// own; returns how many it removed.
    func removeLeftovers(olderThan age: TimeInterval) async -> Int
}

extension LogArchive {
    /// A store whose writes are whole or nothing leaves nothing behind.
    public func removeLeftovers(olderThan age: TimeInterval) async -> Int { 0 }
}

/// One archived log as every archive stores it: gzip of `{"format":1,"build":…,"lines":[…]}`,
/// the lines exactly as the build wrote them (a line may hold any character), and the build's
/// id, so an archive filed under another build's name is refused instead of shown. Read one
/// with `zcat FILE | jq -r '.lines[]'`. The gzip has no time in its header, so the same log
/// always gives the same bytes (the registry's archive stores them under their digest).
struct LogArchiveFile: Codable {
    var format: Int
    var build: String
    var lines: [String]

    /// The most an archive may inflate to: far above any log the agents' cap lets through
    /// (`--max-log-size`, 64 MiB by default) with its JSON escapes, and a bound on what a
    /// corrupt archive can make the scheduler allocate.
    static let maxInflatedBytes = 1 << 30

    /// Why stored bytes are not `build`'s log; `description` says what they are instead.
    enum Refusal: Error, CustomStringConvertible {
        /// Not intact gzip of the JSON above.
        case corrupt(String)
        /// Whole, but another build's log or a format this scheduler does not know.
        case foreign(String)

        var description: String {
            switch self {
            case .corrupt(let why), .foreign(let why): why
            }
        }
    }

    /// The archive's bytes for `lines` of `build`.
    static func encode(build: String, lines: [String]) throws -> [UInt8] {
        try Gzip.compress(Array(try KilnJSON.encoder().encode(LogArchiveFile(format: 1, build: build, lines: lines))))
    }

    /// The lines of `build` in `bytes`, or a `Refusal`: never part of a log.
    static func decode(_ bytes: [UInt8], build: String) throws -> [String] {
        let decoded: LogArchiveFile
        do {
            decoded = try KilnJSON.decode(LogArchiveFile.self, from: try Gzip.decompress(bytes, limit: maxInflatedBytes))
        } catch {
            throw Refusal.corrupt("\(error)")
        }
        guard decoded.format == 1, decoded.build == build else {
            throw Refusal.foreign(decoded.format == 1 ? "build \(Validation.printable(decoded.build))'s log" : "format \(decoded.format)")
        }
        return decoded.lines
    }
}
