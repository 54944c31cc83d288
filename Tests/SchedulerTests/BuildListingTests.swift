import Etcd
import Foundation
import KilnClient
import KilnCore
import KilnTestSupport
import NIOHTTP1
import Synchronization
@testable import Scheduler
import Testing

/// Listings through the build index, a page at a time, against a scheduler over a real etcd.
@Suite("Build listings: index and pages")
struct BuildListingTests {
    static func project(_ name: String, repository: String? = nil) -> String {
        #"{"name":"\#(name)","repository":"\#(repository ?? "http://127.0.0.1:1/\(name).git")","buildImage":"a:1","buildCommand":"make"}"#
    }

    func addProjects(_ h: SchedulerHarness, _ names: [String]) async throws {
        for name in names {
            let r = try await h.request(.POST, "/api/v1/projects", body: Self.project(name))
            #expect(r.status == 201, "\(r.body)")
        }
    }

    /// Queues `count` builds, taking turns over `projects`; returns their ids in order.
    func enqueue(_ h: SchedulerHarness, _ count: Int, over projects: [String]) async throws -> [String] {
        let store = SchedulerStore(etcd: h.etcd)
        var ids: [String] = []
        for i in 0..<count {
            ids.append(try await store.enqueue(project: projects[i % projects.count], request: BuildRequest()).id)
        }
        return ids
    }

    /// Every page of a listing, following `X-Next-Cursor` (checked against `Link`) from `path`.
    func allPages(_ h: SchedulerHarness, _ path: String, token: String? = nil, between: @Sendable (Int) async throws -> Void = { _ in }) async throws -> [[Build]] {
        var pages: [[Build]] = [], next: String? = path
        while let p = next {
            let r = try await h.request(.GET, p, token: token ?? h.adminToken)
            #expect(r.status == 200, "\(r.body)")
            pages.append(try KilnJSON.decode([Build].self, from: r.body))
            let cursor = r.headers.first { $0.0.lowercased() == "x-next-cursor" }?.1
            let link = r.headers.first { $0.0.lowercased() == "link" }?.1
            #expect((cursor == nil) == (link == nil))
            if let cursor {
                #expect(cursor == pages.last?.last?.id, "the cursor is the last build of its page")
                #expect(link?.hasSuffix("cursor=\(cursor)>; rel=\"next\"") == true, "\(link ?? "")")
                next = link.map { String($0.dropFirst().prefix { $0 != ">" }) }
            } else {
                next = nil
            }
            try await between(pages.count)
            #expect(pages.count < 100)
        }
        return pages
    }

    @Test func pagesRepeatAndSkipNoBuildWhileBuildsAreAdded() async throws {
        try await withScheduler { h in
            try await addProjects(h, ["alpha", "beta"])
            let first = try await enqueue(h, 75, over: ["alpha", "beta"])
            let added = Mutex<[String]>([])
            // Ten builds arrive after the first page was read; none may show up on a later page.
            let pages = try await allPages(h, "/api/v1/builds?limit=20") { page in
                if page == 1 { let more = try await enqueue(h, 10, over: ["beta"]); added.withLock { $0 = more } }
            }
            #expect(pages.map(\.count) == [20, 20, 20, 15])
            let listed = pages.flatMap { $0.map(\.id) }
            #expect(listed == first.sorted(by: >), "every build of the time of the first page, newest first, once")
            #expect(added.withLock { $0 }.count == 10)
            #expect(Set(listed).isDisjoint(with: added.withLock { $0 }))
            // The newest page now starts with the ten.
            let newest = try KilnJSON.decode([Build].self, from: try await h.request(.GET, "/api/v1/builds?limit=10").body)
            #expect(Set(newest.map(\.id)) == Set(added.withLock { $0 }))

            // A project's listing goes through its index, page by page.
            let alpha = try await allPages(h, "/api/v1/builds?project=alpha&limit=7")
            #expect(alpha.flatMap { $0.map(\.id) } == first.enumerated().filter { $0.offset % 2 == 0 }.map(\.element).sorted(by: >))
            #expect(alpha.allSatisfy { $0.allSatisfy { $0.project == "alpha" } })
            #expect(try await h.etcd.count(prefix: h.keys.buildIndex(project: "alpha")) == 38)
            #expect(try await h.etcd.count(prefix: h.keys.buildIndex(project: "beta")) == 47)
            // The old client's call still works: an array, at most `limit`.
            let old = try await h.request(.GET, "/api/v1/builds?project=beta")
            #expect(try KilnJSON.decode([Build].self, from: old.body).count == 47)
            #expect(!old.headers.contains { $0.0.lowercased() == "x-next-cursor" })
        }
    }

    @Test func theClientFollowsTheCursorToTheLastPage() async throws {
        try await withScheduler { h in
            try await addProjects(h, ["alpha", "beta"])
            let ids = try await enqueue(h, 25, over: ["alpha", "beta"])
            let client = APIClient(h.api, token: h.adminToken)
            var seen: [String] = [], cursor: String?, pages = 0
            repeat {
                let page = try await client.builds(project: "beta", limit: 5, cursor: cursor)
                seen += page.builds.map(\.id)
                cursor = page.next
                pages += 1
            } while cursor != nil && pages < 10
            #expect(pages == 3 && seen == ids.enumerated().filter { $0.offset % 2 == 1 }.map(\.element).sorted(by: >))
        }
    }

    @Test func badPagingIsRefusedWithWhatToSend() async throws {
        try await withScheduler { h in
            try await addProjects(h, ["alpha"])
            let ids = try await enqueue(h, 3, over: ["alpha"])
            for query in ["limit=0", "limit=1001", "limit=-5", "limit=ten", "limit=", "cursor=../../projects/alpha", "cursor=B0ABC",
                          "cursor=b0%2F..%2Fx", "cursor=b0%00", "cursor=" + String(repeating: "b", count: 65), "project=alpha&cursor=x%20y"] {
                let r = try await h.request(.GET, "/api/v1/builds?\(query)")
                #expect(r.status == 400, "\(query): \(r.status) \(r.body)")
                #expect(r.error?.contains("limit") == true || r.error?.contains("X-Next-Cursor") == true, "\(query): \(r.body)")
            }
            // A cursor of the right form that no page gave is a bound like any other.
            let all = try KilnJSON.decode([Build].self, from: try await h.request(.GET, "/api/v1/builds?cursor=zzzz").body)
            #expect(all.map(\.id) == ids.sorted(by: >))
            #expect(try KilnJSON.decode([Build].self, from: try await h.request(.GET, "/api/v1/builds?cursor=b0").body).isEmpty)
            let below = try KilnJSON.decode([Build].self, from: try await h.request(.GET, "/api/v1/builds?project=alpha&cursor=\(ids[2])").body)
            #expect(below.map(\.id) == [ids[1], ids[0]])
        }
    }

    @Test func aMemberPagesThroughTheBuildsOfTheirProjectsOnly() async throws {
        try await withScheduler { h in
            // 18 projects: more than a merge of indexes takes, so the farm's builds are read and filtered.
            let names = (1...18).map { "p\($0)" }
            try await addProjects(h, names)
            let ids = try await enqueue(h, 54, over: names)
            let bob = try await IdentityAPITests.user(h, "bob")
            let carol = try await IdentityAPITests.user(h, "carol")
            for p in names.dropLast() {
                #expect(try await h.request(.PUT, "/api/v1/projects/\(p)/members/bob", body: #"{"role":"reporter"}"#).status < 300)
            }
            for p in ["p3", "p5"] {
                #expect(try await h.request(.PUT, "/api/v1/projects/\(p)/members/carol", body: #"{"role":"reporter"}"#).status < 300)
            }
            let hidden = Set(ids.enumerated().filter { $0.offset % 18 == 17 }.map(\.element))
            let bobs = try await allPages(h, "/api/v1/builds?limit=10", token: bob).flatMap { $0 }
            #expect(bobs.map(\.id) == ids.filter { !hidden.contains($0) }.sorted(by: >))
            // Two projects: their indexes merged.
            let carols = try await allPages(h, "/api/v1/builds?limit=4", token: carol)
            #expect(carols.flatMap { $0.map(\.project) }.allSatisfy { $0 == "p3" || $0 == "p5" })
            #expect(carols.flatMap { $0.map(\.id) } == ids.enumerated().filter { [2, 4].contains($0.offset % 18) }.map(\.element).sorted(by: >))
            // Another project's listing is a 404 as if it did not exist.
            #expect(try await h.request(.GET, "/api/v1/builds?project=p18", token: bob).status == 404)
        }
    }

    /// The builds a console page links to, in order, and its "older" link (unescaped).
    static func consolePage(_ html: String) -> (ids: [String], older: String?) {
        let ids = html.components(separatedBy: "href=\"/ui/builds/").dropFirst().map { String($0.prefix { $0 != "\"" }) }
        let older = html.range(of: "id=\"older\" href=\"").map { String(html[$0.upperBound...].prefix { $0 != "\"" }).replacingOccurrences(of: "&amp;", with: "&") }
        return (ids, older)
    }

    @Test func theConsolesListsLinkToOlderBuilds() async throws {
        try await withScheduler { h in
            try await addProjects(h, ["alpha", "beta"])
            let ids = try await enqueue(h, 130, over: ["alpha", "beta"])
            let console = ConsoleClient(h.api)
            try await console.logIn("admin", h.adminToken)
            let overview = try await console.get("/")
            #expect(overview.status == 200)
            var older = Self.consolePage(overview.body).older
            #expect(older == "/ui/builds?cursor=\(ids.sorted(by: >)[29])", "the overview shows 30")
            var seen: [String] = []
            while let path = older {
                let page = try await console.get(path)
                #expect(page.status == 200, "\(path): \(page.body)")
                (seen, older) = (seen + Self.consolePage(page.body).ids, Self.consolePage(page.body).older)
            }
            #expect(seen == Array(ids.sorted(by: >).dropFirst(30)), "50 a page, then the rest, each once")

            let project = try await console.get("/ui/projects/alpha")
            let alpha = ids.enumerated().filter { $0.offset % 2 == 0 }.map(\.element).sorted(by: >)
            #expect(Self.consolePage(project.body).older == "/ui/builds?project=alpha&cursor=\(alpha[49])")
            let next = try await console.get(Self.consolePage(project.body).older!)
            #expect(Self.consolePage(next.body).ids == Array(alpha.dropFirst(50)))
            #expect(Self.consolePage(next.body).older == nil)
            #expect(try await console.get("/ui/builds?cursor=..%2Fx").status == 400)
        }
    }

    @Test func supersedeFindsTheQueuedBuildsWithoutTheHistory() async throws {
        try await withScheduler { h in
            let body = #"{"name":"sup","repository":"http://127.0.0.1:1/sup.git","buildImage":"a:1","buildCommand":"make","supersede":"queued"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: body).status == 201)
            try await addProjects(h, ["other"])
            let store = SchedulerStore(etcd: h.etcd)
            let other = try await store.enqueue(project: "other", request: BuildRequest(ref: "main"))
            let old = try await store.enqueue(project: "sup", request: BuildRequest(ref: "main"))
            let side = try await store.enqueue(project: "sup", request: BuildRequest(ref: "feature"))
            let new = try await store.enqueue(project: "sup", request: BuildRequest(ref: "main"))
            #expect(try await store.build(old.id).status == .cancelled)
            #expect(try await store.build(old.id).error?.contains(new.id) == true)
            #expect(try await store.build(side.id).status == .queued)
            #expect(try await store.build(new.id).status == .queued)
            #expect(try await store.build(other.id).status == .queued, "another project's build on the same ref stays")
        }
    }
}
