import KilnCore
import Testing

/// The paging of `GET /api/v1/builds` as the scheduler and the CLI read it.
@Suite("build pages")
struct BuildPageTests {
    @Test func aQueryWithoutPagingAsksForTheNewestFifty() throws {
        let q = try BuildPage.query(limit: nil, cursor: nil)
        #expect(q.limit == 50 && q.cursor == nil)
        // An empty cursor (a form's empty field) is none.
        #expect(try BuildPage.query(limit: "1", cursor: "").cursor == nil)
        let most = try BuildPage.query(limit: "1000", cursor: "b0mj4x2k9q1-3fa2c1d0e9b8")
        #expect(most.limit == 1000 && most.cursor == "b0mj4x2k9q1-3fa2c1d0e9b8")
    }

    @Test(arguments: ["0", "-1", "1001", "99999999999999999999", "ten", "", " 5", "5 ", "1e2", "0x10"])
    func aLimitOutsideItsBoundsIsRefusedSayingWhatToAskFor(_ limit: String) {
        let error = #expect(throws: KilnError.self) { try BuildPage.query(limit: limit, cursor: nil) }
        #expect(error?.httpStatus == 400)
        #expect(error?.message.contains("from 1 to 1000") == true, "\(error?.message ?? "")")
    }

    @Test(arguments: ["../builds", "b0/../../x", "B0MJ", "b0mj\u{0}", "a b", "%2F", String(repeating: "b", count: 65), "b0mj4x2k9q1-3fa2c1d0e9b8\n", "🔥"])
    func aCursorThatNoPageGaveIsRefused(_ cursor: String) {
        let error = #expect(throws: KilnError.self) { try BuildPage.query(limit: nil, cursor: cursor) }
        #expect(error?.httpStatus == 400)
        #expect(error?.message.contains("X-Next-Cursor") == true)
        // The message shows the bad input without its control characters.
        #expect(error?.message.contains("\u{0}") == false && error?.message.contains("\n") == false)
    }

    @Test func theNextPathKeepsTheLimitAndTheProject() {
        let page = BuildPage(builds: [], next: "b0mj4x2k9q1-3fa2c1d0e9b8")
        #expect(page.nextPath(limit: 20, project: "shop") == "/api/v1/builds?limit=20&project=shop&cursor=b0mj4x2k9q1-3fa2c1d0e9b8")
        #expect(page.nextPath(limit: 50, project: nil) == "/api/v1/builds?limit=50&cursor=b0mj4x2k9q1-3fa2c1d0e9b8")
        #expect(BuildPage(builds: [], next: nil).nextPath(limit: 50, project: nil) == nil)
    }
}
