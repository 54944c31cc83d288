@testable import BuildAgent
import Foundation
import KilnCore
import KilnTestSupport
import Logging
import Testing

/// `DiskKeeper` on a real folder (no container engine): what it measures, what it evicts and
/// in which order, what it keeps across a restart, and when it refuses builds.
@Suite("Disk keeper on a real folder")
struct DiskKeeperTests {
    let logger = { var l = Logger(label: "disk-test"); l.logLevel = .critical; return l }()

    /// Writes `kib` KiB of random bytes at `path` under `dir` (random: no filesystem packs it).
    func fill(_ dir: URL, _ path: String, kib: Int) throws {
        let url = dir.appendingPathComponent(path)
        try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
        try Data((0..<(kib << 10)).map { _ in UInt8.random(in: 0...255) }).write(to: url)
    }

    func keeper(_ dir: URL, budget: Int64, minFree: Int64 = 0) -> DiskKeeper {
        DiskKeeper(dataDir: dir, settings: .init(budget: budget, minFree: minFree), docker: nil, agentID: "agent-1", keepImages: 0, logger: logger)
    }

    /// A build of `project` that uses `paths`, writing `kib` into each.
    func build(_ keeper: DiskKeeper, _ dir: URL, _ project: String, _ paths: [String], kib: Int = 100) async throws {
        await keeper.hold(project)
        for path in paths {
            await keeper.used(path, by: project)
            try fill(dir, path + "/blob-\(UUID().uuidString)", kib: kib)
        }
        await keeper.release(project)
    }

    func exists(_ dir: URL, _ path: String) -> Bool { FileManager.default.fileExists(atPath: dir.appendingPathComponent(path).path) }

    @Test func theLeastRecentlyUsedGoAndTheBudgetHoldsAfterEveryBuild() async throws {
        let dir = try TempDir("disk-keeper")
        let keeper = keeper(dir.url, budget: 450 << 10)
        _ = await keeper.start()
        for p in ["a", "b", "c", "d"] {
            try await build(keeper, dir.url, p, ["mirrors/\(p).git", "mvncache/shared/\(p)"])
            let status = await keeper.check()
            let measured = DiskUsage.bytes(of: dir.path("mirrors").path) + DiskUsage.bytes(of: dir.path("mvncache").path)
            #expect(status.used <= status.budget && measured <= status.budget + (16 << 10), "after \(p): \(status.used) held, \(measured) measured")
            #expect(abs(measured - status.used) <= 16 << 10, "the count follows the disk (folders' own blocks aside)")
        }
        // Each project holds about 200 KiB: only the last two fit.
        #expect(!exists(dir.url, "mirrors/a.git") && !exists(dir.url, "mvncache/shared/b"))
        #expect(exists(dir.url, "mirrors/d.git") && exists(dir.url, "mvncache/shared/c"))
        // Their stamps went with them; nothing is left aside.
        #expect(!exists(dir.url, "last-use/mirrors/a.git") && exists(dir.url, "last-use/mirrors/d.git"))
        for parent in DiskKeeper.parents {
            #expect(((try? FileManager.default.contentsOfDirectory(atPath: dir.path(parent).path)) ?? []).allSatisfy { !$0.hasPrefix(".") })
        }
    }

    /// A project's caches other than Maven's (`CacheLayout`: `.kiln-caches/…` in its folder)
    /// count with its folder, which stays one entry, and go with it.
    @Test func aProjectsOtherCachesCountAndGoWithItsFolder() async throws {
        let dir = try TempDir("disk-keeper")
        let keeper = keeper(dir.url, budget: 450 << 10)
        _ = await keeper.start()
        let gradle = try #require(CacheLayout.folder(of: "/root/.gradle"))
        for p in ["a", "b"] {
            await keeper.hold(p)
            await keeper.used("mvncache/protected/\(p)", by: p)
            try fill(dir.url, "mvncache/protected/\(p)/repository/blob", kib: 100)
            try fill(dir.url, "mvncache/protected/\(p)/\(gradle)/blob", kib: 200)
            await keeper.release(p)
            let status = await keeper.check()
            if p == "a" { #expect(abs(status.used - (300 << 10)) <= 16 << 10, "counted \(status.used)") }
        }
        // 600 KiB over a 450 KiB budget: a's folder went, its Gradle cache with it.
        #expect(!exists(dir.url, "mvncache/protected/a"))
        #expect(exists(dir.url, "mvncache/protected/b/\(gradle)/blob"))
        #expect(DiskKeeper.listEntries(under: dir.url) == ["mvncache/protected/b"])
        #expect(DiskKeeper.project(ofEntry: "mvncache/protected/b/\(gradle)") == nil)
    }

    @Test func aProjectBuildingHereKeepsItsFoldersEvenOverTheBudget() async throws {
        let dir = try TempDir("disk-keeper")
        // The oldest folder, and over the budget alone.
        try fill(dir.url, "mvncache/protected/busy/blob", kib: 200)
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_000)], ofItemAtPath: dir.path("mvncache/protected/busy").path)
        let keeper = keeper(dir.url, budget: 150 << 10)
        // A build of busy starts before the first check can evict its cache.
        await keeper.hold("busy")
        _ = await keeper.start()
        #expect(exists(dir.url, "mvncache/protected/busy"), "in use: never evicted")
        try await build(keeper, dir.url, "new", ["mirrors/new.git"])
        #expect(exists(dir.url, "mvncache/protected/busy"), "in use: never evicted, oldest as it is")
        #expect(!exists(dir.url, "mirrors/new.git"), "what may go goes, even the youngest")
        #expect(await keeper.check().used > 150 << 10, "over the budget while it builds")
        await keeper.used("mvncache/protected/busy", by: "busy")
        await keeper.release("busy")
        #expect(!exists(dir.url, "mvncache/protected/busy"), "once its build ended it may go too")
        #expect(await keeper.check().used == 0)
    }

    @Test func lastUseSurvivesARestartAndOldFoldersAreFound() async throws {
        let dir = try TempDir("disk-keeper")
        // A folder from before the agent had stamps (its own date is old).
        try fill(dir.url, "mvncache/shared/legacy/blob", kib: 100)
        try FileManager.default.setAttributes([.modificationDate: Date(timeIntervalSince1970: 1_000)], ofItemAtPath: dir.path("mvncache/shared/legacy").path)
        let first = keeper(dir.url, budget: 1 << 30)
        #expect(await first.start().used >= 100 << 10, "the old folder was measured")
        try await build(first, dir.url, "x", ["mirrors/x.git"])
        try await build(first, dir.url, "y", ["mirrors/y.git"])
        try await build(first, dir.url, "x", ["mirrors/x.git"])  // x is now younger than y
        // Evicted while the agent was down, then a restart with a budget for one project.
        try fill(dir.url, "mvncache/shared/.evicted-1234/blob", kib: 10)
        let second = keeper(dir.url, budget: 250 << 10)
        let status = await second.start()
        #expect(!exists(dir.url, "mvncache/shared/.evicted-1234"), "what an eviction left aside is deleted at start")
        #expect(!exists(dir.url, "mvncache/shared/legacy") && !exists(dir.url, "mirrors/y.git"), "the oldest uses go first")
        #expect(exists(dir.url, "mirrors/x.git"))
        #expect(status.used <= status.budget)
    }

    @Test func anAgentShortOfSpaceEvictsEverythingItMayAndRefusesWithTheReason() async throws {
        let dir = try TempDir("disk-keeper")
        // More free space kept than any disk here has: the agent must refuse.
        let keeper = keeper(dir.url, budget: 1 << 30, minFree: 1 << 60)
        try fill(dir.url, "mirrors/a.git/blob", kib: 100)
        let status = await keeper.start()
        #expect(!exists(dir.url, "mirrors/a.git"), "evicted below the budget for space")
        let reason = try #require(status.refusing)
        #expect(reason.hasPrefix("short of disk space: ") && reason.contains(dir.url.path) && reason.contains("--min-free"), "\(reason)")
        #expect(status.minFree == 1 << 60 && status.free > 0)
    }

    @Test func theDefaultBudgetIsAShareOfTheFreeSpace() async throws {
        let dir = try TempDir("disk-keeper")
        let keeper = DiskKeeper(dataDir: dir.url, settings: .init(), docker: nil, agentID: "agent-1", keepImages: 0, logger: logger)
        let status = await keeper.start()
        let fs = try #require(DiskUsage.filesystem(of: dir.url.path))
        // Other processes write to this disk meanwhile: half of the free space, give or take.
        #expect(abs(Double(status.budget) / Double(fs.free) - 0.5) < 0.05, "half of \(fs.free) free: \(status.budget)")
        #expect(status.minFree == min(10 << 30, fs.size / 10))
        #expect(status.refusing == nil || fs.free < status.minFree)
    }
}
