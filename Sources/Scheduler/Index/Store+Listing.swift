import Etcd
import Foundation
import KilnCore

/// Builds newest first, a page at a time, without reading every record: the farm's builds
/// from `/kiln/builds/`, a project's through its index (`Keys.buildIndex(project:)`), each
/// found with ``NewestWindow`` (a few limited reads of keys) and read with one transaction of
/// gets per hundred builds.
extension SchedulerStore {
    /// How many gets one transaction holds (etcd refuses more than 128 operations by default).
    static let getsPerTxn = 100
    /// A listing for a few projects merges their indexes; for more it reads the farm's builds
    /// and keeps theirs, at most this many pages of them per answer.
    static let mergedProjectsMax = 16
    static let filteredPagesMax = 10

    /// Builds, newest first, of one project or (nil) of the farm: `limit` of them below
    /// `cursor` (a build id from the page before; nil: the newest).
    public func buildPage(project: String? = nil, limit: Int = BuildPage.defaultLimit, cursor: String? = nil) async throws -> BuildPage {
        guard let project else {
            let (ids, more) = try await newestIDs(under: keys.builds, below: cursor, limit: limit)
            return page(try await records(ids), ids: ids, more: more)
        }
        try Validation.projectName(project)
        let (ids, more) = try await newestIDs(under: keys.buildIndex(project: project), below: cursor, limit: limit)
        return page(try await records(ids).filter { $0.project == project }, ids: ids, more: more)
    }

    /// Builds a caller may read, newest first: every build for an admin, else those of the
    /// projects (of `projects`, every project) their roles let them read.
    func buildPage(readableBy roles: RoleMap, projects: [Project], limit: Int, cursor: String?) async throws -> BuildPage {
        if roles.caller.admin { return try await buildPage(limit: limit, cursor: cursor) }
        return try await buildPage(of: Set(projects.filter { roles.may(.read, roles.role(of: $0)) }.map(\.name)), limit: limit, cursor: cursor)
    }

    /// Builds, newest first, of the projects in `projects` (those a caller may read).
    func buildPage(of projects: Set<String>, limit: Int, cursor: String?) async throws -> BuildPage {
        if projects.isEmpty { return BuildPage(builds: [], next: nil) }
        if projects.count > Self.mergedProjectsMax { return try await filteredPage(of: projects, limit: limit, cursor: cursor) }
        let found = try await withThrowingTaskGroup(of: (ids: [String], more: Bool).self) { group in
            for p in projects {
                group.addTask { try await newestIDs(under: keys.buildIndex(project: p), below: cursor, limit: limit) }
            }
            return try await group.reduce(into: [(ids: [String], more: Bool)]()) { $0.append($1) }
        }
        let merged = found.flatMap(\.ids).sorted(by: >)
        let ids = Array(merged.prefix(limit))
        let more = merged.count > limit || found.contains { $0.more }
        return page(try await records(ids).filter { projects.contains($0.project) }, ids: ids, more: more)
    }

    /// The farm's builds, keeping those of `projects`, page after page until `limit` are
    /// found or ``filteredPagesMax`` pages were read (the answer is then short, with a cursor).
    private func filteredPage(of projects: Set<String>, limit: Int, cursor: String?) async throws -> BuildPage {
        var kept: [Build] = [], at = cursor
        for _ in 0..<Self.filteredPagesMax {
            let (ids, more) = try await newestIDs(under: keys.builds, below: at, limit: limit)
            for b in try await records(ids) where projects.contains(b.project) {
                kept.append(b)
                if kept.count == limit { return BuildPage(builds: kept, next: b.id != ids.last || more ? b.id : nil) }
            }
            guard more, let last = ids.last else { return BuildPage(builds: kept, next: nil) }
            at = last
        }
        return BuildPage(builds: kept, next: at)
    }

    /// The newest build of each project in `projects` that has one.
    func latestBuilds(of projects: [String]) async throws -> [String: Build] {
        var ids: [String] = []
        for start in stride(from: 0, to: projects.count, by: Self.mergedProjectsMax) {
            let some = projects[start..<min(start + Self.mergedProjectsMax, projects.count)]
            ids += try await withThrowingTaskGroup(of: String?.self) { group in
                for p in some { group.addTask { try await newestIDs(under: keys.buildIndex(project: p), below: nil, limit: 1).ids.first } }
                return try await group.reduce(into: [String]()) { if let id = $1 { $0.append(id) } }
            }
        }
        return Dictionary(try await records(ids).map { ($0.project, $0) }) { a, b in a.id > b.id ? a : b }
    }

    private func page(_ builds: [Build], ids: [String], more: Bool) -> BuildPage {
        // The cursor is the last id looked at, found or not: the next page starts below it.
        BuildPage(builds: builds, next: more ? ids.last : nil)
    }

    /// The ids of the newest `limit` keys under `prefix` (whose keys end in build ids) below
    /// `cursor`, newest first, and whether there are older ones.
    func newestIDs(under prefix: String, below cursor: String?, limit: Int) async throws -> (ids: [String], more: Bool) {
        // Build ids start with `b`: keys outside [b, c) are none (an agent may write any key
        // under `/kiln/builds/`), and stay out of the counts and the cursors.
        let end = prefix + "c"
        let upper = cursor.map { min(prefix + $0, end) } ?? end
        let nowMs = Int64(Date().timeIntervalSince1970 * 1000)
        var window = NewestWindow(limit: limit, upperMs: cursor.flatMap(NewestWindow.timeMs) ?? nowMs, hintMs: listingHints.span(for: prefix))
        func lower(_ fromMs: Int64?) -> String { prefix + NewestWindow.firstID(atMs: fromMs ?? 0) }
        func keys(_ kvs: [KeyValue], window fromMs: Int64?, count: Int) -> (ids: [String], more: Bool) {
            let ids = kvs.suffix(limit).reversed().map { String($0.key.dropFirst(prefix.count)) }
            return (ids.filter(BuildID.isValid), window.more(count: count, window: fromMs))
        }
        var step = window.start()
        while true {
            switch step {
            case .probe(let fromMs):
                let r = try await etcd.range(key: lower(fromMs), rangeEnd: upper, options: .init(limit: window.maxFetch, keysOnly: true))
                step = window.probed(count: r.count, firstMs: r.kvs.first.flatMap { NewestWindow.timeMs(of: String($0.key.dropFirst(prefix.count))) })
                // The probe read every key of its window.
                if case .done = step {
                    listingHints.remember(window.landedSpanMs, for: prefix)
                    return keys(r.kvs, window: fromMs, count: Int(r.count))
                }
            case .done:
                preconditionFailure("a window is done only after its probe")
            case .fetchAll(let fromMs):
                let kvs = try await etcd.range(key: lower(fromMs), rangeEnd: upper, options: .init(keysOnly: true)).kvs
                return keys(kvs, window: fromMs, count: kvs.count)
            }
        }
    }

    /// The records of `ids`, in their order; a build that is gone (or whose record does not
    /// decode, or names another id) is left out.
    func records(_ ids: [String]) async throws -> [Build] {
        var builds: [Build] = []
        for start in stride(from: 0, to: ids.count, by: Self.getsPerTxn) {
            let some = Array(ids[start..<min(start + Self.getsPerTxn, ids.count)])
            let r = try await etcd.txn(Txn(success: some.map { .get(keys.build($0)) }))
            for (id, response) in zip(some, r.responses) {
                guard let kv = response.kvs.first, let b = try? KilnJSON.decode(Build.self, from: kv.value), b.id == id else { continue }
                builds.append(b)
            }
        }
        return builds
    }
}
