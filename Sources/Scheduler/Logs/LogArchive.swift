import Foundation

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
