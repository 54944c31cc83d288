/// One page of `GET /api/v1/builds[?project=][&limit=][&cursor=]`: builds newest first, and the
/// cursor of the next (older) page, if there may be one.
///
/// On the wire the body stays what it always was, a JSON array of builds, so an older client
/// reads the first page as before; the cursor travels in the `X-Next-Cursor` header (and a
/// `Link: <…>; rel="next"` header with the whole next URL). No header: this was the last page.
/// A cursor is the id of the last build of its page; builds made after it never appear in
/// the pages that follow it, so paging while builds are added repeats and skips none. A page
/// may hold fewer than `limit` builds and still have a next one (a build removed meanwhile,
/// or a listing that filters): follow the cursor until there is none.
public struct BuildPage: Sendable, Equatable {
    public var builds: [Build]
    public var next: String?

    public init(builds: [Build], next: String?) {
        self.builds = builds
        self.next = next
    }

    public static let nextCursorHeader = "X-Next-Cursor"
    public static let defaultLimit = 50
    public static let maxLimit = 1000

    /// A listing's paging as asked (`limit` and `cursor` as the query holds them: nil when
    /// absent; an empty cursor is none): the limit, 1…``maxLimit`` (default ``defaultLimit``),
    /// and the cursor, which must be a build id as a page's `X-Next-Cursor` gives it. Throws
    /// `KilnError.invalid` (400) that says what to send instead.
    public static func query(limit: String?, cursor: String?) throws -> (limit: Int, cursor: String?) {
        var n = defaultLimit
        if let limit {
            guard let value = Int(limit), (1...maxLimit).contains(value) else {
                throw KilnError.invalid("limit '\(Validation.printable(limit))' is not a whole number from 1 to \(maxLimit): ask for at most \(maxLimit) builds a page, and follow the X-Next-Cursor header for more")
            }
            n = value
        }
        guard let cursor, !cursor.isEmpty else { return (n, nil) }
        guard BuildID.isValid(cursor) else {
            throw KilnError.invalid("cursor '\(Validation.printable(cursor))' is not one a page gave: pass the X-Next-Cursor header of the page before (a build id), or no cursor for the newest builds")
        }
        return (n, cursor)
    }

    /// The path of the page after this one with the same `limit` and `project`, for the `Link`
    /// header; nil on the last page.
    public func nextPath(limit: Int, project: String?) -> String? {
        guard let next else { return nil }
        return "/api/v1/builds?limit=\(limit)\(project.map { "&project=\($0)" } ?? "")&cursor=\(next)"
    }
}
