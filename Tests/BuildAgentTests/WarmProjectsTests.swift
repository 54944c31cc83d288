@testable import BuildAgent
import Foundation
import KilnCore
import Logging
import Testing

/// The warm projects an agent publishes (issue 16): the list the rules make, and the real
/// `DiskKeeper` on a folder of its own publishing them when, and only when, their set changes.
@Suite("Warm projects")
struct WarmProjectsTests {
    func entry(_ path: String, _ bytes: Int64, usedAt seconds: Double) -> DiskBudget.Entry {
        DiskBudget.Entry(path: path, project: DiskKeeper.project(ofEntry: path)!, bytes: bytes, lastUse: Date(timeIntervalSince1970: seconds))
    }

    @Test func oneLinePerProjectMostRecentlyUsedFirstAndCapped() {
        let e = [entry("mirrors/a.git", 10, usedAt: 5), entry("mvncache/shared/a", 5, usedAt: 30), entry("mirrors/b.git", 7, usedAt: 20),
                 entry("mvncache/protected/c", 1, usedAt: 20)]
        // a's latest use is its cache's; b and c tie, by name.
        #expect(DiskBudget.warm(e) == [WarmProject(name: "a", bytes: 15), WarmProject(name: "b", bytes: 7), WarmProject(name: "c", bytes: 1)])
        #expect(DiskBudget.warm(e, limit: 2).map(\.name) == ["a", "b"])
        let many = (0..<(AgentDisk.maxWarm + 5)).map { entry("mirrors/p\($0).git", 1, usedAt: Double($0)) }
        let list = DiskBudget.warm(many)
        #expect(list.count == AgentDisk.maxWarm)
        #expect(list.first?.name == "p\(AgentDisk.maxWarm + 4)")  // the newest kept, the oldest left out
        #expect(!list.contains { $0.name == "p0" })
    }

    @Test func aChangedSetIsMeaningfulChangedBytesAreNot() {
        let d = AgentDisk(free: 40 << 30, budget: 20 << 30, used: 5 << 30, minFree: 10 << 30, warm: [WarmProject(name: "a", bytes: 1)])
        var bytes = d
        bytes.warm = [WarmProject(name: "a", bytes: 200 << 20)]
        #expect(!bytes.differsMeaningfully(from: d))
        var reordered = d
        reordered.warm = [WarmProject(name: "b", bytes: 1), WarmProject(name: "a", bytes: 1)]
        #expect(reordered.differsMeaningfully(from: d))
        var same = reordered
        same.warm = [WarmProject(name: "a", bytes: 1), WarmProject(name: "b", bytes: 1)]
        #expect(!same.differsMeaningfully(from: reordered))
        // A reader keeps only valid names, at most the cap.
        var bad = d
        bad.warm = [WarmProject(name: "../etc", bytes: 1), WarmProject(name: "ok-1", bytes: 1), WarmProject(name: "UP", bytes: 1)]
        #expect(bad.warmProjects == ["ok-1"])
    }

    @Test func theKeeperPublishesANewWarmProjectAtOnceAndAGoneOne() async throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-warm-\(UUID().uuidString)")
        defer { try? FileManager.default.removeItem(at: dir) }
        let keeper = DiskKeeper(dataDir: dir, settings: .init(budget: 1 << 30, minFree: 0), docker: nil, agentID: "a1", keepImages: 0,
                                logger: Logger(label: "test"))
        #expect(await keeper.start().warm == [])
        let (published, sink) = AsyncStream.makeStream(of: AgentDisk.self)
        // The periodic check is an hour away: whatever arrives comes from a change.
        let running = Task { await keeper.run(every: .seconds(3600)) { sink.yield($0) } }
        defer { running.cancel() }
        var next = published.makeAsyncIterator()

        // A simulated build: warm without a byte written.
        await keeper.ran("demo")
        #expect(await next.next()?.warm?.map(\.name) == ["demo"])
        await keeper.ran("demo")  // the same set: nothing is sent

        // A real entry: warm as soon as a build starts using it, measured when it ends.
        let cache = dir.appendingPathComponent("mvncache/shared/other")
        try FileManager.default.createDirectory(at: cache, withIntermediateDirectories: true)
        try Data(repeating: 1, count: 64 << 10).write(to: cache.appendingPathComponent("dep.jar"))
        await keeper.hold("other")
        await keeper.used("mvncache/shared/other", by: "other")
        #expect(await next.next()?.warm?.map(\.name) == ["other", "demo"])
        let after = await keeper.release("other")
        #expect((after.warm?.first { $0.name == "other" }?.bytes ?? 0) >= 64 << 10)

        // The folder is gone when the next build of it ends: the project is no longer warm.
        try FileManager.default.removeItem(at: cache)
        await keeper.hold("other")
        await keeper.used("mvncache/shared/other", by: "other")
        await keeper.release("other")
        #expect(await next.next()?.warm?.map(\.name) == ["demo"])
    }
}
