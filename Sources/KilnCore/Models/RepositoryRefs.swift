import Foundation

/// The branches and tags of a project's repository as an agent's fetch found them: what the
/// console's build form offers beside the project's own branch names (docs/console.md).
///
/// Only agents fetch (the scheduler never connects to a repository: a repository URL is a way
/// to make whoever fetches send requests, which is why fetches obey the agent's fetch policy),
/// so the agent publishes the names in the record of the build whose fetch found them
/// (`Build.repositoryRefs`), which it may write anyway, and the scheduler reads them from the
/// project's newest builds. The names come from a repository anyone with push access fills, so
/// on both sides:
///
/// 1. only `refs/heads/…` and `refs/tags/…`, each a valid ref (`Validation.ref`);
/// 2. newest commit first (ties by name), at most ``maxCount`` names and ``maxBytes`` bytes of
///    names in all, so a repository with a hundred thousand tags costs a record 8 KiB at most;
/// 3. short names (`main`, `v1.0`); a tag whose short name is also a branch's keeps
///    `refs/tags/` (the short name would be ambiguous to the build);
/// 4. a suggestion only: the console escapes them as any string, and a build asked for one is
///    checked as any other ref.
public enum RepositoryRefs {
    public static let maxCount = 200
    public static let maxBytes = 8 << 10
    /// An agent publishes a project's list when it changed since its last publication, and at
    /// least every this many builds of the project it runs, so that the newest builds (the
    /// console reads the project's 50 newest) carry one without every record paying for it.
    public static let republishEvery = 10

    /// One ref of the mirror: its full name and the time of the commit it points at.
    public struct Found: Sendable, Equatable {
        public var name: String
        /// Seconds since 1970 of the commit (0 when unknown).
        public var time: Int64
        public init(name: String, time: Int64) {
            self.name = name
            self.time = time
        }
    }

    /// The names to publish of what a mirror holds, by the rules above.
    public static func bounded(_ found: [Found]) -> [String] {
        let heads = "refs/heads/", tags = "refs/tags/"
        let valid = found.filter { f in
            (f.name.hasPrefix(heads) || f.name.hasPrefix(tags)) && (try? Validation.ref(f.name)) != nil
        }
        let branches = Set(valid.filter { $0.name.hasPrefix(heads) }.map { String($0.name.dropFirst(heads.count)) })
        let named = valid.map { f -> (name: String, time: Int64) in
            if f.name.hasPrefix(heads) { return (String(f.name.dropFirst(heads.count)), f.time) }
            let short = String(f.name.dropFirst(tags.count))
            return (branches.contains(short) ? f.name : short, f.time)
        }
        let newest = named.sorted { $0.time != $1.time ? $0.time > $1.time : $0.name < $1.name }.map(\.name)
        return accepted(newest)
    }

    /// What a reader keeps of a published list (an agent, possibly a hostile one, wrote it):
    /// valid refs in their order, each once, within ``maxCount`` and ``maxBytes``.
    public static func accepted(_ names: [String]) -> [String] {
        var kept: [String] = [], seen = Set<String>(), bytes = 0
        for name in names where kept.count < maxCount && (try? Validation.ref(name)) != nil && !name.hasPrefix("-") {
            guard bytes + name.utf8.count <= maxBytes else { break }
            guard seen.insert(name).inserted else { continue }
            kept.append(name)
            bytes += name.utf8.count
        }
        return kept
    }

    /// Whether an agent publishes `current` with this build: it changed since `last` (what it
    /// published for the project before; nil: never), or `buildsSince` builds of the project
    /// went by without it.
    public static func shouldPublish(_ current: [String], last: [String]?, buildsSince: Int) -> Bool {
        current != last || buildsSince >= republishEvery
    }

    /// The refs the newest of `builds` that carries a list published (`builds` newest first).
    public static func latest(in builds: [Build]) -> [String] {
        builds.first { $0.repositoryRefs != nil }?.repositoryRefs.map(accepted) ?? []
    }
}
