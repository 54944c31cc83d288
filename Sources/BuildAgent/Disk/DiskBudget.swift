import Foundation
import KilnCore

/// What an agent evicts from its disk, and when it refuses new builds: pure rules over what
/// the agent measured, with no I/O and no clock (tested in `DiskBudgetTests`). `DiskKeeper`
/// measures, asks, and carries the answers out.
///
/// An entry is one folder of the data dir that builds reuse and that can be made again from
/// elsewhere: a project's git mirror (`mirrors/<project>.git`) or one of its two cache folders
/// (`mvncache/protected/<project>`, `mvncache/shared/<project>`, each with all the project's
/// caches inside: `CacheLayout`). Workspaces are not entries:
/// each is removed when its build ends.
///
/// Rules of eviction, in order:
/// 1. An entry of a project that has a build running on this agent is never evicted: the
///    build may fetch into the mirror or mount the cache at any moment until it ends.
/// 2. While the entries hold more than the budget, or the filesystem has less free than the
///    minimum, the least recently used entry goes (oldest use first; equal uses by path, so
///    the choice never depends on the order of a listing). Its bytes count as freed at once.
/// 3. It stops when both hold, or when nothing but rule 1's entries is left.
///
/// Rule of refusal: an agent whose filesystem (the data dir's, or the container engine's
/// storage when that is another) has less free than the minimum after eviction refuses new
/// builds, with the reason; it takes them again once the free space is back above the
/// minimum by a margin (`refusalMargin`), so that a disk hovering at the line does not make
/// it flap.
enum DiskBudget {
    struct Entry: Sendable, Equatable {
        /// The folder relative to the data dir ("mirrors/app.git").
        var path: String
        var project: String
        /// On disk (allocated blocks, each hard-linked file once).
        var bytes: Int64
        /// The end of the last build that used it.
        var lastUse: Date
    }

    /// The entries to evict, in order (rules 1 to 3). `free` is the free space of the data
    /// dir's filesystem now; `busy` the projects with a build running here.
    static func evictions(_ entries: [Entry], busy: Set<String>, budget: Int64, free: Int64, minFree: Int64) -> [Entry] {
        var used = entries.reduce(Int64(0)) { $0 + $1.bytes }
        var free = free
        var chosen: [Entry] = []
        let candidates = entries.filter { !busy.contains($0.project) }
            .sorted { ($0.lastUse, $0.path) < ($1.lastUse, $1.path) }
        for entry in candidates {
            guard used > budget || free < minFree else { break }
            chosen.append(entry)
            used -= entry.bytes
            free += entry.bytes
        }
        return chosen
    }

    /// How far above the minimum the free space must be for a refusing agent to take builds
    /// again: a tenth of the minimum, at least 256 MiB.
    static func refusalMargin(minFree: Int64) -> Int64 { max(256 << 20, minFree / 10) }

    /// The refusal (rule of refusal) for a filesystem with `free` bytes at `path`, given
    /// whether the agent refuses now.
    static func refusal(free: Int64, minFree: Int64, path: String, refusingNow: Bool) -> String? {
        guard minFree > 0 else { return nil }  // --min-free 0: never
        let line = refusingNow ? minFree + refusalMargin(minFree: minFree) : minFree
        guard free < line else { return nil }
        return "short of disk space: \(AgentDisk.describe(free)) free on the filesystem of \(path), below the \(AgentDisk.describe(minFree)) it keeps free (--min-free), after evicting every mirror, cache and kept image no running build uses"
    }

    /// The budget when `--disk-budget` is not given: half of what the data dir's filesystem
    /// has free plus what the mirrors and caches already hold (so that a restart does not
    /// shrink it as they grow). The other half is left for what builds write besides (their
    /// checkouts, the images the engine builds when its storage is on the same disk) and for
    /// everything else on the machine.
    static func defaultBudget(free: Int64, held: Int64) -> Int64 { (max(0, free) + max(0, held)) / 2 }

    /// The minimum free space when `--min-free` is not given: a tenth of the filesystem, at
    /// most 10 GiB (enough for the checkout, the Maven downloads and the image of a large build).
    static func defaultMinFree(filesystemSize: Int64) -> Int64 { min(10 << 30, max(0, filesystemSize) / 10) }
}
