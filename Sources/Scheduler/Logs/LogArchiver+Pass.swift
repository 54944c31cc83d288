import Etcd
import Foundation
import KilnCore

extension LogArchiver {
    /// What one pass did.
    enum Outcome: Sendable, Equatable {
        /// Nothing to do, and why (``ArchivePlan/nothing(_:)``).
        case nothing(String)
        /// The archive holds `lines` lines now; `deleted` chunks left etcd.
        case archived(lines: Int, deleted: Int)
        /// Chunks the mark covered already were deleted.
        case deleted(Int)
    }

    /// The archive could not store a log: it is down or failing for every build, not this one.
    struct StoreFailure: Error, CustomStringConvertible {
        let underlying: any Error
        var description: String { "\(underlying)" }
    }

    /// Chunks deleted per transaction: each is also compared, and etcd takes at most 128
    /// operations of each kind in one (`--max-txn-ops`), the record's write and the fence besides.
    static let deletesPerTxn = 100

    /// One pass over `build` (``ArchivePlan``): store its log whole, then mark the record and
    /// delete the archived chunks. Throws when the archive or etcd failed, or the record or a
    /// chunk changed under it (the caller tries again later); nothing is deleted that the
    /// archive has not confirmed, and nothing written meanwhile.
    @discardableResult
    func pass(_ build: String, fence: [Compare]) async throws -> Outcome {
        guard BuildID.isValid(build) else { return .nothing("not a build id") }
        let recordKey = keys.build(build)
        guard let kv = try await etcd.get(recordKey) else { return .nothing("no build record") }
        guard var record = try? KilnJSON.decode(Build.self, from: kv.value) else { return .nothing("the build record does not decode") }
        // The record first: a running build's chunks are not read at all.
        if let why = ArchivePlan.notYet(record) { return .nothing(why) }
        let (chunks, _) = try await store.logChunks(of: build)
        let byName = Dictionary(chunks.map { ($0.name, $0) }) { a, _ in a }
        let doomed: [String]
        var markWrite = false
        var replaced: String?  // the copy the new mark replaces, removed once the mark is written
        switch ArchivePlan.decide(build: record, chunks: chunks.map(\.name)) {
        case .nothing(let why):
            return .nothing(why)
        case .delete(let names):
            doomed = names
        case .archive(let fresh, let leftover):
            var earlier: [String] = []
            if let mark = record.logArchive, mark.isPlausible(on: record) { earlier = try await store.archivedLines(of: build, mark: mark) }
            let lines = earlier + fresh.flatMap { byName[$0]!.lines }
            // A deposed leader stores nothing: two leaders replacing one archive file with logs
            // read at different moments could leave the shorter one under the newer mark.
            if !fence.isEmpty, !(try await etcd.txn(Txn(compare: fence)).succeeded) {
                throw KilnError.conflict("this scheduler no longer leads: build \(build)'s log is left to the new leader")
            }
            // The archive first: only what it has confirmed leaves etcd.
            let version: String?
            do {
                version = try await archive.store(build: build, lines: lines)
            } catch {
                throw StoreFailure(underlying: error)
            }
            replaced = record.logArchive?.version.flatMap { $0 == version ? nil : $0 }
            record.logArchive = ArchivedLog(archivedAt: Date(), lines: lines.count, through: fresh.last!, version: version)
            markWrite = true
            doomed = leftover + fresh
        }
        var deleted = 0
        for (i, batch) in stride(from: 0, to: doomed.count, by: Self.deletesPerTxn).map({ Array(doomed[$0..<min($0 + Self.deletesPerTxn, doomed.count)]) }).enumerated() {
            var compare = fence + batch.map { Compare.modRevision(byName[$0]!.key, .equal, byName[$0]!.modRevision) }
            var success = batch.map { TxnOp.delete(byName[$0]!.key) }
            if i == 0, markWrite {
                // The mark goes with the first deletes: a reader that misses a chunk finds it.
                compare.append(.modRevision(recordKey, .equal, kv.modRevision))
                success.insert(.put(recordKey, try KilnJSON.encode(record)), at: 0)
            }
            let r = try await etcd.txn(Txn(compare: compare, success: success))
            guard r.succeeded else {
                throw KilnError.conflict("build \(build)'s record or log changed while its log was archived (or this scheduler no longer leads); \(deleted) of \(doomed.count) chunks left etcd")
            }
            deleted += batch.count
        }
        if markWrite, let replaced {
            // Only now: until the new mark was written, readers asked for this copy.
            do { try await archive.delete(build: build, version: replaced) } catch {
                logger.warning("the earlier archived copy \(replaced) of build \(build)'s log stays in the archive (\(error)); retention removes only the newest", metadata: ["build.id": "\(build)"])
            }
        }
        if markWrite, let mark = record.logArchive {
            logger.info("log archived: \(mark.lines) lines, \(deleted) chunks left etcd", metadata: ["build.id": "\(build)"])
            return .archived(lines: mark.lines, deleted: deleted)
        }
        logger.info("\(deleted) chunks already archived left etcd", metadata: ["build.id": "\(build)"])
        return .deleted(deleted)
    }
}
