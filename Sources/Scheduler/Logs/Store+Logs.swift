import Etcd
import Foundation
import KilnCore

/// A build's log as one read saw it: the archived lines (if any), then the chunks still in
/// etcd after them. The API, `kiln logs`, the console and the follower all read it this way.
public struct LogView: Sendable, Equatable {
    public var lines: [String]
    /// The name of the last chunk these lines reach (the archive's mark, or a later chunk);
    /// nil when there is none yet. A chunk named after it holds lines after these.
    public var through: String?
    /// A revision no later than any read of this view: a watch from after it misses no chunk.
    public var revision: Int64
}

/// One chunk of a build's log in etcd, with its name under the build's log prefix.
struct StoredChunk: Sendable {
    var name: String
    var key: String
    var modRevision: Int64
    /// Nil when the value is not a chunk (nothing Kiln writes; shown as no lines).
    var chunk: LogChunk?
    var lines: [String] { chunk?.lines ?? [] }
}

extension SchedulerStore {
    /// The whole log of a build so far: its archived lines, then the chunks still in etcd.
    public func log(of id: String) async throws -> [String] {
        try await logView(of: id).lines
    }

    /// The log as one consistent view (see ``LogView``).
    ///
    /// The chunks are read first, the record after: the archiver writes its mark in the same
    /// transaction as (or before) deleting any chunk it archived, so a chunk this read missed
    /// because it was archived is covered by the mark the record read then finds. Chunks up to
    /// the mark's `through` are taken from the archive (its first `lines` lines), later ones
    /// from etcd; so a chunk archived and not yet deleted is never shown twice.
    public func logView(of id: String) async throws -> LogView {
        guard BuildID.isValid(id) else { throw KilnError.invalid("build id '\(Validation.printable(String(id.prefix(80))))' is malformed") }
        let (chunks, revision) = try await logChunks(of: id)
        var lines: [String] = []
        var through: String?
        if let kv = try await etcd.get(keys.build(id)), let build = try? KilnJSON.decode(Build.self, from: kv.value),
           let mark = build.logArchive, mark.isPlausible(on: build) {
            lines = try await archivedLines(of: id, mark: mark)
            through = mark.through
        }
        for c in chunks where LogNames.isAfter(c.name, through) {
            lines += c.lines
            through = c.name
        }
        return LogView(lines: lines, through: through, revision: revision)
    }

    /// The first `mark.lines` lines of the build's archive.
    func archivedLines(of id: String, mark: ArchivedLog) async throws -> [String] {
        guard let archive = logArchive else {
            throw KilnError.unavailable("build \(id)'s log was moved to the log archive (\(mark.lines) lines), which this scheduler was not given: start it with the --log-archive of the other schedulers (docs/logs.md)")
        }
        guard let all = try await archive.read(build: id) else {
            throw KilnError.unavailable("build \(id)'s log was archived (\(mark.lines) lines) but \(archive) has no archive of it: does every scheduler use the same --log-archive (one folder, or one registry)? A lost archive comes back from its backup (docs/logs.md)")
        }
        guard all.count >= mark.lines else {
            throw KilnError.internalError("\(archive) holds \(all.count) lines of build \(id)'s log, its record says \(mark.lines) were archived: the archive is older than the record (restored from an older backup?) (docs/logs.md)")
        }
        return Array(all.prefix(mark.lines))
    }

    /// Every chunk of the build's log in etcd, in key order (the order a reader shows them),
    /// read a page at a time (a 64 MiB log is many chunks), and the revision of the first page.
    func logChunks(of id: String, after start: String? = nil) async throws -> (chunks: [StoredChunk], revision: Int64) {
        let prefix = keys.logs(of: id)
        let end = EtcdClient.prefixEnd(prefix)
        var from = start.map { prefix + $0 + "\0" } ?? prefix
        var chunks: [StoredChunk] = []
        var revision: Int64?
        while true {
            let page = try await etcd.range(key: from, rangeEnd: end, limit: 100)
            if revision == nil { revision = page.revision }
            for kv in page.kvs {
                // Only names of Kiln's form are chunks: anything else under the prefix (an agent
                // may write there) is neither shown nor archived.
                let name = String(kv.key.dropFirst(prefix.count))
                guard ArchivedLog.isChunkName(name) else { continue }
                chunks.append(StoredChunk(name: name, key: kv.key, modRevision: kv.modRevision,
                                          chunk: try? KilnJSON.decode(LogChunk.self, from: kv.value)))
            }
            guard page.more, let last = page.kvs.last else { break }
            from = LogNames.resume(after: last.key)
        }
        return (chunks, revision!)
    }
}

/// Names of log chunks and keys under `/kiln/logs/`.
enum LogNames {
    /// True when chunk `name` sorts after `mark` (etcd's byte order); always when `mark` is nil.
    static func isAfter(_ name: String, _ mark: String?) -> Bool {
        guard let mark else { return true }
        return mark.utf8.lexicographicallyPrecedes(name.utf8)
    }

    /// Where a range read goes on after `key`: just after it; or, for a key that is not ASCII
    /// (never Kiln's: etcd's bytes need not be UTF-8, and then the String is not the key, so
    /// "just after it" could be before it again), past every key that begins with its ASCII
    /// part followed by more than ASCII. Always after `key`, so a walk cannot go round.
    static func resume(after key: String) -> String {
        let ascii = key.utf8.prefix { $0 < 0x80 }
        if ascii.count == key.utf8.count { return key + "\0" }
        return EtcdClient.prefixEnd(String(decoding: ascii, as: UTF8.self))
    }

    /// The build and chunk name of a key under `logs` (`/kiln/logs/`), or nil for another key.
    static func split(_ key: String, under logs: String) -> (build: String, name: String)? {
        guard key.hasPrefix(logs) else { return nil }
        let rest = key.dropFirst(logs.count)
        guard let slash = rest.firstIndex(of: "/") else { return nil }
        let build = String(rest[..<slash]), name = String(rest[rest.index(after: slash)...])
        return build.isEmpty || name.isEmpty ? nil : (build, name)
    }
}
