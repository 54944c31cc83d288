@testable import BuildAgent
import DockerAPI
import Foundation
import KilnCore
import Logging
import Testing

/// The rules of eviction and refusal, the figures an agent publishes, and the names of kept
/// images: pure, without a disk.
@Suite("Disk budget rules")
struct DiskBudgetTests {
    static let GiB: Int64 = 1 << 30

    func entry(_ path: String, _ gib: Int64, usedAt seconds: Double) -> DiskBudget.Entry {
        DiskBudget.Entry(path: path, project: DiskKeeper.project(ofEntry: path)!, bytes: gib * Self.GiB, lastUse: Date(timeIntervalSince1970: seconds))
    }

    @Test func underBudgetAndWithSpaceNothingIsEvicted() {
        let e = [entry("mirrors/a.git", 1, usedAt: 1), entry("mvncache/shared/a", 2, usedAt: 2)]
        #expect(DiskBudget.evictions(e, busy: [], budget: 3 * Self.GiB, free: 50 * Self.GiB, minFree: 10 * Self.GiB).isEmpty)
    }

    @Test func overBudgetTheLeastRecentlyUsedGoUntilItFits() {
        let e = [entry("mvncache/shared/c", 4, usedAt: 30), entry("mirrors/a.git", 1, usedAt: 10), entry("mvncache/protected/b", 3, usedAt: 20),
                 entry("mirrors/b.git", 1, usedAt: 20)]
        // 9 GiB held, 5 allowed: a's mirror (oldest), then b's cache and mirror (same use, by path).
        let out = DiskBudget.evictions(e, busy: [], budget: 5 * Self.GiB, free: 50 * Self.GiB, minFree: 0)
        #expect(out.map(\.path) == ["mirrors/a.git", "mirrors/b.git", "mvncache/protected/b"])
    }

    @Test func aProjectBuildingHereIsNeverEvictedEvenOverBudget() {
        let e = [entry("mirrors/a.git", 5, usedAt: 1), entry("mvncache/shared/a", 5, usedAt: 1), entry("mirrors/b.git", 1, usedAt: 9)]
        let out = DiskBudget.evictions(e, busy: ["a"], budget: 1, free: 50 * Self.GiB, minFree: 0)
        #expect(out.map(\.path) == ["mirrors/b.git"], "only b may go; a stays over the budget while it builds")
    }

    @Test func shortOfSpaceEvictsBelowTheBudgetToo() {
        let e = [entry("mirrors/a.git", 2, usedAt: 1), entry("mirrors/b.git", 2, usedAt: 2), entry("mirrors/c.git", 2, usedAt: 3)]
        // Well under the budget, but 7 GiB free of the 10 to keep: two entries' worth go.
        let out = DiskBudget.evictions(e, busy: [], budget: 100 * Self.GiB, free: 7 * Self.GiB, minFree: 10 * Self.GiB)
        #expect(out.map(\.path) == ["mirrors/a.git", "mirrors/b.git"])
    }

    @Test func refusalBelowTheMinimumWithAMarginBeforeTakingBuildsAgain() {
        let min = 10 * Self.GiB
        #expect(DiskBudget.refusal(free: min, minFree: min, path: "/d", refusingNow: false) == nil)
        #expect(DiskBudget.refusal(free: min - 1, minFree: min, path: "/d", refusingNow: false) != nil)
        let reason = DiskBudget.refusal(free: min - Self.GiB / 2, minFree: min, path: "/d", refusingNow: false)
        #expect(reason?.hasPrefix("short of disk space: 9.5 GiB free on the filesystem of /d, below the 10 GiB it keeps free (--min-free)") == true, "\(reason ?? "nil")")
        // Refusing: still refusing at the line, and until a tenth above it (1 GiB here).
        #expect(DiskBudget.refusal(free: min + Self.GiB - 1, minFree: min, path: "/d", refusingNow: true) != nil)
        #expect(DiskBudget.refusal(free: min + Self.GiB, minFree: min, path: "/d", refusingNow: true) == nil)
        // A small minimum still has a margin of 256 MiB.
        #expect(DiskBudget.refusalMargin(minFree: 100 << 20) == 256 << 20)
        // --min-free 0 never refuses.
        #expect(DiskBudget.refusal(free: 0, minFree: 0, path: "/d", refusingNow: true) == nil)
    }

    @Test func defaults() {
        #expect(DiskBudget.defaultBudget(free: 40 * Self.GiB, held: 10 * Self.GiB) == 25 * Self.GiB)
        #expect(DiskBudget.defaultMinFree(filesystemSize: 252 * Self.GiB) == 10 * Self.GiB)
        #expect(DiskBudget.defaultMinFree(filesystemSize: 20 * Self.GiB) == 2 * Self.GiB)
    }

    @Test("entries and their projects", arguments: [
        ("mirrors/app.git", "app"), ("mvncache/protected/app", "app"), ("mvncache/shared/my-app", "my-app"),
        ("mirrors/app", nil), ("mvncache/other/app", nil), ("mvncache/shared/app/repository", nil), ("workspaces/b-1", nil),
        ("mirrors/.git", nil), ("mvncache/shared/Bad_Name", nil),
    ] as [(String, String?)])
    func entries(_ path: String, _ project: String?) {
        #expect(DiskKeeper.project(ofEntry: path) == project)
    }

    @Test func theRegistrationIsWrittenAgainOnlyForAMeaningfulChange() {
        let d = AgentDisk(free: 40 * Self.GiB, budget: 20 * Self.GiB, used: 5 * Self.GiB, minFree: 10 * Self.GiB)
        #expect(d.differsMeaningfully(from: nil))
        var small = d
        small.free -= 500 << 20  // under 1 GiB (5 % of the budget)
        small.used += 500 << 20
        #expect(!small.differsMeaningfully(from: d))
        var big = d
        big.free -= Self.GiB
        #expect(big.differsMeaningfully(from: d))
        var refusing = d
        refusing.refusing = "short of disk space"
        #expect(refusing.differsMeaningfully(from: d) && d.differsMeaningfully(from: refusing))
        #expect(d.summary == "40 GiB free, caches 5 GiB of 20 GiB")
        #expect(AgentDisk.describe(1536 << 20) == "1.5 GiB" && AgentDisk.describe(512) == "512 bytes" && AgentDisk.describe(3 << 40) == "3 TiB")
        #expect(AgentDisk.describe((10 << 30) - 1) == "10 GiB" && AgentDisk.describe(1023) == "1023 bytes")
    }

    @Test("disk sizes", arguments: [("50GiB", 50 << 30), ("2T", 2 << 40), ("800M", 800 << 20), ("0", 0)])
    func sizes(_ text: String, _ bytes: Int) {
        #expect(AgentConfiguration.parseSize(text) == bytes)
    }

    @Test func namesOfKeptImagesAreTheAgentsOwnAndRefusedToBuilds() throws {
        let docker = DockerClient(socketPath: "/nonexistent")
        let kept = KeptImages(docker: docker, count: 2, agentID: "Agent_1.x", logger: Logger(label: "test"))
        let name = kept.name(project: "app", milliseconds: 1_700_000_000_123)
        #expect(name == "localhost/kiln-kept/4167656e745f312e78/app:1700000000123")
        try Validation.imageReference(name)
        #expect(kept.parse(name) == .init(name: name, project: "app", milliseconds: 1_700_000_000_123))
        // Another agent's on the same engine, and other names, are not this agent's.
        let other = KeptImages(docker: docker, count: 2, agentID: "agent-2", logger: Logger(label: "test"))
        #expect(kept.parse(other.name(project: "app", milliseconds: 1)) == nil)
        #expect(kept.parse("127.0.0.1:5000/app:1") == nil && kept.parse(kept.prefix + "Bad_Name:1") == nil)
    }

    @Test("the agent's own names for other builds' images are refused, written short too", arguments: [
        "localhost/kiln-kept/61/app:1", "LOCALHOST/kiln-pulled/x:1", "kiln-kept/61/app:1", "kiln-pulled/0a1b:1", "localhost/kiln-kept/61/app@sha256:" + String(repeating: "a", count: 64),
    ])
    func agentPrivateNames(_ image: String) {
        #expect(DockerfilePolicy.refusal(image: image, registry: "127.0.0.1:5000", project: "app") != nil, "\(image)")
        #expect(DockerfilePolicy.checkImages("FROM localhost/kiln/busybox:1\nCOPY --from=\(image) / /loot", registry: "127.0.0.1:5000", project: "app") != nil)
    }

    @Test("image IDs are refused in any length, names of hex digits too", arguments: [
        ("31", false), ("3163", false), ("sha256:31", false), ("9b7adf92fabe", false), ("cafe", false),
        ("cafe:1", true), ("docker.io/library/cafe", true), ("busybox", true), ("localhost/kiln/busybox:1", true),
    ])
    func imageIDs(_ image: String, _ allowed: Bool) {
        #expect((DockerfilePolicy.refusal(image: image, registry: "127.0.0.1:5000", project: "app") == nil) == allowed, "\(image)")
    }
}
