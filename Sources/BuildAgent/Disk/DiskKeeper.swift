import DockerAPI
import Foundation
import KilnCore
import Logging
#if canImport(Glibc)
import Glibc
#endif

/// Keeps an agent's disk: its git mirrors and Maven caches within the disk budget, least
/// recently used first (`DiskBudget` decides), the images it keeps for layer reuse
/// (`KeptImages`) out when space runs short, and the figures the agent publishes in its
/// registration (`AgentDisk`), with the reason when it refuses new builds.
///
/// Call order: `start()` once, before the agent registers; then, for each build, `hold` when
/// it starts, `used` for each mirror or cache it is about to use, `release` when it ends
/// (however it ends); `check()` whenever (the agent calls it periodically). All of it may run
/// concurrently; checks are carried out one at a time.
///
/// When a folder was last used is kept durably: a stamp file per entry under
/// `<data-dir>/last-use/` (the entry's path), whose modification time is the end of the last
/// build that used it and whose text is the entry's size as last measured. The stamps live
/// outside the folders builds mount, so a build cannot make its cache look young. An evicted
/// folder is first renamed to `.evicted-<uuid>` beside it (atomic, and on its own filesystem
/// even when the caches are a mount of their own: no build finds it half gone), then deleted;
/// such leftovers of an agent that died meanwhile are deleted at start.
actor DiskKeeper {
    struct Settings: Sendable {
        /// Bytes mirrors and caches may hold; nil: `DiskBudget.defaultBudget` at start.
        var budget: Int64?
        /// Free bytes below which the agent refuses builds; nil: `DiskBudget.defaultMinFree`.
        var minFree: Int64?
        init(budget: Int64? = nil, minFree: Int64? = nil) {
            self.budget = budget
            self.minFree = minFree
        }
    }

    let dataDir: URL
    let settings: Settings
    /// The engine builds run in; nil: none (a simulated agent).
    let docker: DockerClient?
    /// Images kept per project (`KeptImages`); 0: none.
    let keepImages: Int
    let logger: Logger
    /// This agent's kept images; nil: no engine.
    let images: KeptImages?

    private(set) var budget: Int64 = 0
    private(set) var minFree: Int64 = 0
    private var entries: [String: DiskBudget.Entry] = [:]
    /// Builds running per project, and the entries they said they use.
    private var busy: [String: Int] = [:]
    private var touched: [String: Set<String>] = [:]
    /// The engine's storage, when it is on this machine and on another filesystem.
    private var engineRoot: String?
    private var refusing: String?
    private var checking: Task<AgentDisk, Never>?
    /// The figures of the last check.
    private(set) var last: AgentDisk?
    /// The figures, each time the set of warm projects changed (an entry appeared or went),
    /// so that `run` publishes them at once rather than at the next periodic check: the
    /// dispatcher places builds by them (issue 16).
    private let warmUpdates: AsyncStream<AgentDisk>
    private let warmChanged: AsyncStream<AgentDisk>.Continuation
    /// The warm projects last sent on `warmUpdates` (or published by a check).
    private var warmSent: Set<String> = []

    init(dataDir: URL, settings: Settings, docker: DockerClient?, agentID: String, keepImages: Int, logger: Logger) {
        self.dataDir = dataDir
        self.settings = settings
        self.docker = docker
        self.keepImages = keepImages
        self.logger = logger
        self.images = docker.map { KeptImages(docker: $0, count: keepImages, agentID: agentID, logger: logger) }
        (warmUpdates, warmChanged) = AsyncStream.makeStream(of: AgentDisk.self, bufferingPolicy: .bufferingNewest(1))
    }

    private var stamps: URL { dataDir.appendingPathComponent("last-use") }
    /// The folders entries live in.
    static let parents = ["mirrors", "mvncache/protected", "mvncache/shared"]
    static let evictedPrefix = ".evicted-"

    /// The entries of one project, relative to the data dir.
    static func entries(of project: String) -> [String] {
        ["mirrors/\(project).git", "mvncache/protected/\(project)", "mvncache/shared/\(project)"]
    }

    /// The project of an entry's path, or nil for any other path.
    static func project(ofEntry path: String) -> String? {
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).map(String.init)
        var name: String
        switch (parts.count, parts.first) {
        case (2, "mirrors") where parts[1].hasSuffix(".git"): name = String(parts[1].dropLast(4))
        case (3, "mvncache") where parts[1] == "protected" || parts[1] == "shared": name = parts[2]
        default: return nil
        }
        if (try? Validation.projectName(name)) == nil { name = "" }
        return name.isEmpty ? nil : name
    }

    /// The entries' paths under `root` (the data dir, or the stamps' folder).
    static func listEntries(under root: URL) -> [String] {
        parents.flatMap { folder in
            ((try? FileManager.default.contentsOfDirectory(atPath: root.appendingPathComponent(folder).path)) ?? []).map { "\(folder)/\($0)" }
        }.filter { project(ofEntry: $0) != nil }
    }

    // MARK: start

    /// Deletes what evictions left half done, finds the entries (measuring those without a stamp), settles the
    /// budget and the minimum, and runs a first check. Before the agent registers.
    func start() async -> AgentDisk {
        let fm = FileManager.default
        try? fm.createDirectory(at: stamps, withIntermediateDirectories: true)
        await deleteLeftovers()
        await images?.pruneAll()
        let found = Self.listEntries(under: dataDir)
        let unstamped = found.filter { !fm.fileExists(atPath: stamps.appendingPathComponent($0).path) }.count
        if unstamped > 0 {
            logger.notice("disk: measuring \(unstamped) mirrors and caches this agent has no record of (once; the agent registers after)")
        }
        for path in found {
            entries[path] = await readOrMeasure(path)
        }
        // Stamps whose folder is gone.
        for path in Self.listEntries(under: stamps) where entries[path] == nil {
            try? fm.removeItem(at: stamps.appendingPathComponent(path))
        }
        if let docker, let root = try? await docker.storageRoot(),
           let engine = DiskUsage.filesystem(of: root), engine.device != DiskUsage.filesystem(of: dataDir.path)?.device {
            engineRoot = root
        }
        let fs = DiskUsage.filesystem(of: dataDir.path) ?? .init(free: 0, size: 0, device: 0)
        let held = used
        minFree = settings.minFree ?? DiskBudget.defaultMinFree(filesystemSize: fs.size)
        budget = settings.budget ?? DiskBudget.defaultBudget(free: fs.free, held: held)
        var summary = "disk: mirrors and caches hold \(AgentDisk.describe(held)) of a budget of \(AgentDisk.describe(budget))"
        if settings.budget == nil { summary += " (half of the \(AgentDisk.describe(fs.free)) free on the data dir's filesystem plus what they hold; set --disk-budget)" }
        summary += "; builds are refused below \(AgentDisk.describe(minFree)) free" + (settings.minFree == nil ? " (--min-free)" : "")
        if let engineRoot { summary += "; the engine's storage \(engineRoot) is watched too" }
        logger.notice("\(summary)")
        return await check()
    }

    private var used: Int64 { entries.values.reduce(0) { $0 + $1.bytes } }

    private func readOrMeasure(_ path: String) async -> DiskBudget.Entry? {
        guard let project = Self.project(ofEntry: path) else { return nil }
        let stamp = stamps.appendingPathComponent(path)
        if let attributes = try? FileManager.default.attributesOfItem(atPath: stamp.path), let when = attributes[.modificationDate] as? Date,
           let text = try? String(contentsOf: stamp, encoding: .utf8), let bytes = Int64(text.trimmingCharacters(in: .whitespacesAndNewlines)) {
            return DiskBudget.Entry(path: path, project: project, bytes: bytes, lastUse: when)
        }
        // From before the stamps (or a stamp lost): its last use is the folder's own date.
        let folder = dataDir.appendingPathComponent(path)
        let when = (try? FileManager.default.attributesOfItem(atPath: folder.path))?[.modificationDate] as? Date ?? .distantPast
        let entry = DiskBudget.Entry(path: path, project: project, bytes: await measure(path), lastUse: when)
        writeStamp(entry)
        return entry
    }

    private func measure(_ path: String) async -> Int64 {
        let full = dataDir.appendingPathComponent(path).path
        return (try? await blocking(cancel: nil) { DiskUsage.bytes(of: full) }) ?? 0
    }

    private func writeStamp(_ entry: DiskBudget.Entry) {
        let stamp = stamps.appendingPathComponent(entry.path)
        try? FileManager.default.createDirectory(at: stamp.deletingLastPathComponent(), withIntermediateDirectories: true)
        try? "\(entry.bytes)\n".write(to: stamp, atomically: true, encoding: .utf8)
        try? FileManager.default.setAttributes([.modificationDate: entry.lastUse], ofItemAtPath: stamp.path)
    }

    // MARK: builds

    /// A build of `project` starts: none of its entries is evicted until it ends.
    func hold(_ project: String) {
        busy[project, default: 0] += 1
    }

    /// The build of `project` is about to use the entry at `path` (relative to the data dir).
    func used(_ path: String, by project: String) {
        touched[project, default: []].insert(path)
        if entries[path] == nil {
            entries[path] = DiskBudget.Entry(path: path, project: project, bytes: 0, lastUse: Date())
            sendWarmIfChanged()
        }
    }

    /// A simulated build of `project` ran here and wrote nothing (`kiln agent --simulate`
    /// without `--simulate-disk`): the project counts as warm from now on, as if its mirror
    /// were here, so that a benchmark measures placement through the same registration and
    /// dispatcher as real builds. Nothing is written or measured; the entry is forgotten when
    /// the agent stops.
    func ran(_ project: String) {
        let path = "mirrors/\(project).git"
        entries[path] = DiskBudget.Entry(path: path, project: project, bytes: entries[path]?.bytes ?? 0, lastUse: Date())
        sendWarmIfChanged()
    }

    /// Sends the last figures with the warm projects as they are now, when their set is not
    /// the one last sent. Cheap (no measuring): called whenever an entry may have come or gone.
    private func sendWarmIfChanged() {
        guard var status = last else { return }  // before `start`: its check publishes
        status.warm = DiskBudget.warm(Array(entries.values))
        let names = Set(status.warm?.map(\.name) ?? [])
        guard names != warmSent else { return }
        warmSent = names
        last = status
        warmChanged.yield(status)
    }

    /// A build of `project` ended: the entries it used are measured and stamped, then the
    /// budget is enforced. Returns the figures after that.
    @discardableResult
    func release(_ project: String) async -> AgentDisk {
        let now = Date()
        for path in touched[project] ?? [] {
            let bytes = await measure(path)
            if FileManager.default.fileExists(atPath: dataDir.appendingPathComponent(path).path) {
                let entry = DiskBudget.Entry(path: path, project: project, bytes: bytes, lastUse: now)
                entries[path] = entry
                writeStamp(entry)
            } else {
                entries[path] = nil
                try? FileManager.default.removeItem(at: stamps.appendingPathComponent(path))
            }
        }
        let left = (busy[project] ?? 1) - 1
        busy[project] = left > 0 ? left : nil
        if left <= 0 { touched[project] = nil }
        return await check()
    }

    /// Keeps the image `reference`, just pushed, as the newest of `project`'s (`KeptImages`);
    /// returns whether it did (no: none are kept, or the engine refused).
    func keep(image reference: String, project: String) async -> Bool {
        guard let images, images.count > 0 else { return false }
        return await images.keep(reference, project: project)
    }

    // MARK: checks

    /// Evicts what the rules say, measures the free space and decides whether the agent
    /// refuses builds. One check at a time: a caller that comes while one runs gets its result.
    func check() async -> AgentDisk {
        if let running = checking { return await running.value }
        let task = Task { await self.performCheck() }
        checking = task
        let result = await task.value
        checking = nil
        return result
    }

    private func performCheck() async -> AgentDisk {
        var fs = DiskUsage.filesystem(of: dataDir.path)
        let plan = DiskBudget.evictions(Array(entries.values), busy: Set(busy.keys), budget: budget, free: fs?.free ?? .max, minFree: minFree)
        for entry in plan { await evict(entry) }
        if !plan.isEmpty { fs = DiskUsage.filesystem(of: dataDir.path) }
        // Short of space still (or the engine's own disk is): the kept images go, oldest first.
        var engine = engineRoot.flatMap(DiskUsage.filesystem(of:))
        if let images, (fs?.free ?? .max) < minFree || (engine?.free ?? .max) < minFree {
            for kept in await images.all() where !busy.keys.contains(kept.project) {
                await images.remove(kept)
                fs = DiskUsage.filesystem(of: dataDir.path)
                engine = engineRoot.flatMap(DiskUsage.filesystem(of:))
                if (fs?.free ?? .max) >= minFree && (engine?.free ?? .max) >= minFree { break }
            }
        }
        let wasRefusing = refusing != nil
        refusing = fs.flatMap { DiskBudget.refusal(free: $0.free, minFree: minFree, path: dataDir.path, refusingNow: wasRefusing) }
            ?? engine.flatMap { DiskBudget.refusal(free: $0.free, minFree: minFree, path: engineRoot ?? "", refusingNow: wasRefusing) }
        if let refusing, !wasRefusing {
            logger.error("refusing new builds: \(refusing)")
        } else if refusing == nil, wasRefusing {
            logger.notice("taking builds again: \(AgentDisk.describe(min(fs?.free ?? .max, engine?.free ?? .max))) free")
        }
        let status = AgentDisk(free: min(fs?.free ?? 0, engine?.free ?? .max), budget: budget, used: used, minFree: minFree, refusing: refusing,
                               warm: DiskBudget.warm(Array(entries.values)))
        // An entry went (evicted, or its folder gone after a build): publish without waiting.
        if last == nil { warmSent = Set(status.warm?.map(\.name) ?? []) }
        last = status
        sendWarmIfChanged()
        return status
    }

    /// Renames the entry aside and forgets it, then deletes it; a mirror takes the project's
    /// kept images with it (the project has not built here for longest).
    private func evict(_ entry: DiskBudget.Entry) async {
        // A build of the project may have started while this check waited: rule 1 holds now.
        guard busy[entry.project] == nil else { return }
        let fm = FileManager.default
        let from = dataDir.appendingPathComponent(entry.path)
        let aside = from.deletingLastPathComponent().appendingPathComponent(Self.evictedPrefix + UUID().uuidString)
        do {
            try fm.moveItem(at: from, to: aside)
        } catch where fm.fileExists(atPath: from.path) {
            logger.warning("cannot evict \(entry.path): \(error)")
            return
        } catch {}
        entries[entry.path] = nil
        try? fm.removeItem(at: stamps.appendingPathComponent(entry.path))
        logger.notice("evicted \(entry.path) (\(AgentDisk.describe(entry.bytes)), last used \(KilnJSON.formatDate(entry.lastUse)))")
        _ = try? await blocking(cancel: nil) { try? FileManager.default.removeItem(at: aside) }
        if entry.path.hasPrefix("mirrors/"), let images { await images.prune(project: entry.project, keeping: 0) }
    }

    /// Deletes the folders evictions renamed aside and did not get to delete (the agent died).
    private func deleteLeftovers() async {
        let dataDir = self.dataDir
        _ = try? await blocking(cancel: nil) {
            for parent in Self.parents {
                let folder = dataDir.appendingPathComponent(parent)
                for name in (try? FileManager.default.contentsOfDirectory(atPath: folder.path)) ?? [] where name.hasPrefix(Self.evictedPrefix) {
                    try? FileManager.default.removeItem(at: folder.appendingPathComponent(name))
                }
            }
        }
    }

    /// Checks every `interval`, and at once when the warm projects may have changed, and
    /// hands each result to `publish`, until cancelled. `publish` decides whether it is worth
    /// writing (`AgentDisk.differsMeaningfully`).
    func run(every interval: Duration, publish: @escaping @Sendable (AgentDisk) async -> Void) async {
        await withTaskGroup(of: Void.self) { group in
            group.addTask {
                while (try? await Task.sleep(for: interval)) != nil {
                    await publish(await self.check())
                }
            }
            group.addTask {
                for await status in self.warmUpdates {
                    await publish(status)
                }
            }
            await group.next()
            group.cancelAll()
        }
    }
}
