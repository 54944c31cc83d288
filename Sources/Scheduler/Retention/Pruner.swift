import Etcd
import Foundation
import KilnCore
import Logging

/// Prunes what retention lets go (docs/retention.md), on the leader: builds past their
/// project's ``BuildRetention`` with their logs and archives, activity events past the same
/// age, and app versions past their app's ``App/keepVersions``. ``RetentionPolicy`` decides;
/// this carries it out.
///
/// It runs as one of the leader's tasks (``lead(schedulerID:)``): a pass soon after the term
/// starts, then one every ``Configuration/interval``; every write is fenced by the term.
/// A pass works in pages of ``Configuration/batchSize`` builds with a pause after each page
/// that deleted something, so the first pass over a farm that never pruned (100,000 old
/// builds) is a steady trickle of small transactions, not a burst etcd must absorb at once.
///
/// A build goes in one transaction guarded by its record's mod revision: the record, its
/// index entry, its pipeline index entry and every log chunk. A record that changed since
/// it was read (an agent's late write, a roll back asked for meanwhile) is left for the next
/// pass to judge again. The archived log goes after that transaction (it is retried; one that
/// still fails is logged with the build's id and stays behind in the archive).
public struct Pruner: Sendable {
    public struct Configuration: Sendable {
        /// Time between passes while this scheduler leads.
        public var interval: Duration
        /// How long after the term starts the first pass waits: the dispatcher reads
        /// everything at a term's start, and a pass can wait for it.
        public var firstPassDelay: Duration
        /// Builds read per page (their records in one transaction of gets: at most 100, under
        /// etcd's default of 128 operations per transaction); activity events deleted per txn.
        public var batchSize: Int
        /// The pause after each page that deleted something.
        public var pause: Duration

        public init(interval: Duration = .seconds(600), firstPassDelay: Duration = .seconds(10), batchSize: Int = 100, pause: Duration = .milliseconds(250)) {
            self.interval = interval
            self.firstPassDelay = firstPassDelay
            self.batchSize = min(max(batchSize, 1), 100)
            self.pause = pause
        }
    }

    /// What one pass removed.
    public struct Report: Sendable, Equatable {
        public var builds = 0
        /// Builds whose record changed between the read and the delete (left for the next pass).
        public var changedMeanwhile = 0
        public var activityEvents = 0
        public var appVersions = 0
        /// Archived logs whose delete failed after their build was removed.
        public var archiveFailures = 0
        public init() {}
    }

    let etcd: EtcdClient
    let keys: Keys
    /// Where ended builds' logs are archived (part B's `LocalLogArchive` or a shared store);
    /// nil: no archive, only the chunks in etcd are deleted.
    let archive: (any LogArchive)?
    let configuration: Configuration
    let logger: Logger

    public init(etcd: EtcdClient, keys: Keys, archive: (any LogArchive)?, configuration: Configuration = .init(), logger: Logger) {
        self.etcd = etcd
        self.keys = keys
        self.archive = archive
        self.configuration = configuration
        self.logger = logger
    }

    // MARK: the leader's loop

    /// Runs passes until cancelled (the term's end). Its writes are fenced by the term the
    /// leader key holds for `schedulerID` when it starts; if the key names another scheduler
    /// already, the term is over and it returns.
    public func lead(schedulerID: String) async {
        var backoff = Duration.seconds(1)
        var fence: [Compare]?
        while fence == nil, !Task.isCancelled {
            do {
                guard let kv = try await etcd.get(keys.leader), kv.string == schedulerID else { return }
                fence = [.createRevision(keys.leader, .equal, kv.createRevision)]
            } catch {
                logger.warning("retention: reading the leader key failed: \(error); trying again in \(backoff)")
                guard (try? await Task.sleep(for: backoff)) != nil else { return }
                backoff = min(backoff * 2, .seconds(30))
            }
        }
        guard let fence, (try? await Task.sleep(for: configuration.firstPassDelay)) != nil else { return }
        repeat {
            do {
                _ = try await pass(fence: fence)
            } catch is TermEnded {
                return  // the dispatcher ends this task with the term; nothing more to write
            } catch {
                if Task.isCancelled { return }
                logger.warning("retention pass stopped: \(error); the next one in \(configuration.interval)")
            }
        } while (try? await Task.sleep(for: configuration.interval)) != nil
    }

    /// One pass over the farm: apps, then every project's builds (projects deleted since
    /// included), then activity.
    @discardableResult
    public func pass(fence: [Compare], now: Date = Date()) async throws -> Report {
        let started = ContinuousClock.now
        var report = Report()
        let apps = try await etcd.range(prefix: keys.apps).kvs
        report.appVersions = try await trimApps(apps, fence: fence)
        let projects = try await projectRetentions()
        let indexed = try await names(under: keys.index + "builds/")
        for name in Set(projects.keys).union(indexed).sorted() {
            try Task.checkCancellation()
            let retention: BuildRetention
            switch projects[name] {
            case .some(.some(let own)): retention = own
            case .some(.none): continue  // a record that does not decode: never taken for deleted
            case .none: retention = RetentionPolicy.deletedProject
            }
            let r = try await pruneBuilds(project: name, retention: retention, deleted: projects[name] == nil, fence: fence, now: now, total: report.builds)
            report.builds += r.builds
            report.changedMeanwhile += r.changedMeanwhile
            report.archiveFailures += r.archiveFailures
        }
        report.activityEvents = try await pruneActivity(projects: projects, apps: apps, fence: fence, now: now)
        let took = ContinuousClock.now - started
        let line = "retention pass: \(report.builds) builds, \(report.activityEvents) activity events, \(report.appVersions) app versions pruned in \(took)"
            + (report.changedMeanwhile > 0 ? "; \(report.changedMeanwhile) builds changed meanwhile (judged again next pass)" : "")
            + (report.archiveFailures > 0 ? "; \(report.archiveFailures) archived logs could not be deleted" : "")
        if report.builds + report.activityEvents + report.appVersions + report.archiveFailures > 0 { logger.notice("\(line)") } else { logger.debug("\(line)") }
        return report
    }

    /// Each project's retention by name; a record that does not decode has none (nil value).
    func projectRetentions() async throws -> [String: BuildRetention?] {
        var out: [String: BuildRetention?] = [:]
        for kv in try await etcd.range(prefix: keys.projects).kvs {
            guard let name = Keys.name(of: kv.key, under: keys.projects), !name.contains("/") else { continue }
            if let p = try? KilnJSON.decode(Project.self, from: kv.value) {
                out[name] = p.effectiveRetention
            } else {
                logger.warning("retention: project record \(kv.key) does not decode; its builds are kept")
                out[name] = .some(nil)
            }
        }
        return out
    }

    // MARK: builds

    /// One project's share of a pass. `total`: builds the pass pruned before it (for progress lines).
    func pruneBuilds(project: String, retention: BuildRetention, deleted: Bool, fence: [Compare], now: Date, total: Int = 0) async throws -> Report {
        var report = Report()
        let prefix = keys.buildIndex(project: project)
        let count = Int(try await etcd.range(prefix: prefix, limit: 1).count)
        var before = 0
        var start = prefix
        while !Task.isCancelled {
            let page = try await etcd.range(key: start, rangeEnd: Pruner.prefixEnd(prefix), limit: configuration.batchSize)
            let ids = page.kvs.compactMap { Keys.name(of: $0.key, under: prefix) }
            // Ids say when their builds were made: past the first young one nothing is read.
            let old = ids.prefix { !RetentionPolicy.isYoung(id: $0, retention: retention, now: now) }
            guard !old.isEmpty else { break }
            let plan = try await plan(project: project, ids: Array(old), before: before, total: count, retention: retention, now: now)
            var deletedHere = 0
            for id in plan.page.pruned {
                try Task.checkCancellation()
                let outcome = try await delete(build: id, project: project, modRevision: plan.revisions[id] ?? 0, fence: fence)
                switch outcome {
                case .deleted(let archived):
                    deletedHere += 1
                    if !archived { report.archiveFailures += 1 }
                case .changed:
                    report.changedMeanwhile += 1
                }
            }
            report.builds += deletedHere
            if (total + report.builds) / 1000 > (total + report.builds - deletedHere) / 1000 {
                logger.notice("retention: \(total + report.builds) builds pruned so far in this pass (now at project \(project))")
            }
            before += plan.page.decisions.count
            if plan.page.done || old.count < ids.count || !page.more { break }
            start = keyAfter(prefix + (plan.page.decisions.last?.id ?? ""))
            if deletedHere > 0 { try await Task.sleep(for: configuration.pause) }
        }
        if report.builds > 0 {
            logger.info("retention: pruned \(report.builds) builds of \(deleted ? "deleted " : "")project \(project) (it keeps \(retention.summary))",
                        metadata: ["project": "\(project)"])
        }
        return report
    }

    /// What the walk decided on one page, with the mod revision each record was read at (0:
    /// the record is missing).
    struct Plan: Sendable {
        var page: RetentionPolicy.Page
        var revisions: [String: Int64]
    }

    /// Reads the records of `ids` (one transaction of gets), then the apps, and asks the policy.
    /// The apps are read after the records on purpose: a version is added to an app while its
    /// build's pipeline run is under way, so a record read with its run ended comes with an app
    /// read that already holds the version.
    func plan(project: String, ids: [String], before: Int, total: Int, retention: BuildRetention, now: Date) async throws -> Plan {
        let read = try await etcd.txn(Txn(success: ids.map { .get(keys.build($0)) }))
        var entries: [RetentionPolicy.Entry] = []
        var revisions: [String: Int64] = [:]
        for (id, response) in zip(ids, read.responses) {
            guard let kv = response.kvs.first else {
                entries.append(.init(id: id, record: .missing))
                revisions[id] = 0
                continue
            }
            revisions[id] = kv.modRevision
            // A record that names another build or project than its index entry is left to a person.
            if let b = try? KilnJSON.decode(Build.self, from: kv.value), b.id == id, b.project == project {
                entries.append(.init(id: id, record: .build(b)))
            } else {
                entries.append(.init(id: id, record: .unreadable))
            }
        }
        let references = RetentionPolicy.references(in: try await readApps())
        let page = RetentionPolicy.page(entries, before: before, total: total, retention: retention, now: now, references: references)
        for d in page.decisions where d.verdict == .keep(.unreadable) {
            logger.warning("retention: build record \(keys.build(d.id)) does not decode or names another project than \(project); it is kept",
                           metadata: ["build.id": "\(d.id)"])
        }
        return Plan(page: page, revisions: revisions)
    }

    enum Deletion: Equatable {
        /// `archived`: its archived log is gone too (or there is no archive).
        case deleted(archived: Bool)
        /// The record changed since it was read (or the term ended): nothing was deleted.
        case changed
    }

    /// Deletes one build: its record (if it is still the one read at `modRevision`; 0: if it
    /// is still absent), its index entries and its log chunks in one transaction; then its
    /// archived log.
    func delete(build id: String, project: String, modRevision: Int64, fence: [Compare]) async throws -> Deletion {
        let key = keys.build(id)
        let guardRecord: Compare = modRevision == 0 ? .createRevision(key, .equal, 0) : .modRevision(key, .equal, modRevision)
        let r = try await etcd.txn(Txn(compare: fence + [guardRecord], success: [
            .get(key), .delete(key), .delete(keys.buildIndexEntry(project: project, build: id)),
            .delete(keys.pipelineIndexEntry(build: id)), .deletePrefix(keys.logs(of: id)),
        ], failure: [.get(key)]))
        guard r.succeeded else {
            // The record as read still there: it was the term's fence that failed.
            if (r.responses.first?.kvs.first?.modRevision ?? 0) == modRevision { throw TermEnded() }
            return .changed
        }
        // The record as it was deleted: its entry in the reuse index goes too (Pruner+Reuse.swift).
        if let kv = r.responses.first?.kvs.first, let record = try? KilnJSON.decode(Build.self, from: kv.value) {
            await dropReuseEntry(of: record)
        }
        return .deleted(archived: await deleteArchive(of: id))
    }

    /// This scheduler's term ended during a pass: its writes are refused, so the pass stops.
    struct TermEnded: Error, CustomStringConvertible {
        var description: String { "this scheduler no longer leads (its term's fence failed)" }
    }

    /// Deletes the archived log of a build whose record is gone, trying three times.
    func deleteArchive(of id: String) async -> Bool {
        guard let archive else { return true }
        for attempt in 1...3 {
            do {
                try await archive.delete(build: id)
                return true
            } catch {
                if attempt == 3 {
                    logger.error("retention: build \(id) is pruned but its archived log could not be deleted: \(error); remove it from the log archive by hand",
                                 metadata: ["build.id": "\(id)"])
                } else {
                    try? await Task.sleep(for: .milliseconds(200 * attempt))
                }
            }
        }
        return false
    }

    func readApps() async throws -> [App] {
        try await etcd.range(prefix: keys.apps).kvs.compactMap { try? KilnJSON.decode(App.self, from: $0.value) }
    }

    // MARK: keys

    /// The names with keys under `base` (`base{name}/…`), one read of one key per name: the
    /// read after a name starts past all its keys (`/` + 1 is `0`).
    func names(under base: String) async throws -> [String] {
        var names: [String] = []
        var start = base
        while let kv = try await etcd.range(key: start, rangeEnd: Pruner.prefixEnd(base), limit: 1).kvs.first {
            guard let rest = Keys.name(of: kv.key, under: base), let slash = rest.firstIndex(of: "/"), slash != rest.startIndex else {
                start = keyAfter(kv.key)  // a key directly under base: not a name's
                continue
            }
            let name = String(rest[..<slash])
            names.append(name)
            start = base + name + "0"
        }
        return names
    }

    /// The first key after `key`.
    func keyAfter(_ key: String) -> String { key + "\0" }

    /// The end of the range of keys that start with `prefix` (its last byte plus one; Kiln's
    /// prefixes end in `/`, so this never carries).
    static func prefixEnd(_ prefix: String) -> String {
        var bytes = Array(prefix.utf8)
        while let last = bytes.last, last == 0xff { bytes.removeLast() }
        guard !bytes.isEmpty else { return "\0" }
        bytes[bytes.count - 1] += 1
        return String(decoding: bytes, as: UTF8.self)
    }
}
