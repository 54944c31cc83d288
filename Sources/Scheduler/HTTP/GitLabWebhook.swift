import Foundation
import HTTPTypes
import Hummingbird
import KilnCore
import Logging
import NIOCore

/// `POST /hooks/gitlab`: GitLab's "Push Hook" and "Tag Push Hook" events, as GitLab sends
/// them (https://docs.gitlab.com/user/project/integrations/webhook_events/).
///
/// The Kiln projects are found by the repository URL (`project.git_http_url`, or
/// `git_ssh_url`; user information in either URL is ignored) through the repository index
/// (`Keys.repoIndex`, kept by the project's save), and the `X-Gitlab-Token` is
/// checked in constant time against each one's webhook token, kept sealed apart from the
/// record (`Keys.webhookSecret(project:)`; one still in a record, from before secrets were
/// sealed, counts until the next start seals it). A push to a branch a project builds (`branches`, default its default
/// branch) queues a build of `checkout_sha`; a tag push builds the tag, with the tag's name as
/// the image tag; a deletion (`after` all zeros) builds nothing. A redelivery with the same
/// `Idempotency-Key` (or `X-Gitlab-Event-UUID`) within a day gets the first build back (the
/// key expires with a lease, ``HookLeases``). Only the queue is written, so the answer is quick.
///
/// Answers follow what GitLab does with them (it disables a hook after repeated 4xx):
/// 401 wrong or missing token, 404 no project with that repository, 400 malformed (missing
/// header, not JSON, a ref or commit id that is not one), 413 body too large, and 200 with
/// `"status": "ignored"` and the reason for an event or push Kiln does not build.
struct GitLabWebhook: Sendable {
    let store: SchedulerStore
    let secrets: SchedulerSecrets
    let logger: Logger
    let metrics: SchedulerMetrics
    /// GitLab sends at most 20 commits per push; 1 MiB is plenty.
    static let maxBody = 1 << 20

    /// The fields Kiln reads; everything else in the payload is ignored.
    struct Payload: Decodable {
        struct ProjectAttributes: Decodable {
            var git_http_url: String?
            var git_ssh_url: String?
            var path_with_namespace: String?
        }
        var object_kind: String?
        var ref: String?
        var before: String?
        var after: String?
        var checkout_sha: String?
        var user_username: String?
        var user_name: String?
        var project: ProjectAttributes?
        var total_commits_count: Int?
    }

    /// What the hook answers.
    struct Answer: Encodable {
        var status: String
        var reason: String?
        var builds: [String]?
    }

    static let zeros = String(repeating: "0", count: 40)

    func handle(_ request: Request) async throws -> Response {
        var request = request
        let event = request.headers[HTTPField.Name("X-Gitlab-Event")!]
        let token = request.headers[HTTPField.Name("X-Gitlab-Token")!]
        let delivery = request.headers[HTTPField.Name("Idempotency-Key")!] ?? request.headers[HTTPField.Name("X-Gitlab-Event-UUID")!]
        let body: ByteBuffer
        do {
            body = try await request.collectBody(upTo: Self.maxBody)
        } catch {
            return answer(413, "rejected", "the body is larger than \(Self.maxBody >> 20) MiB", event: event)
        }
        guard let event else {
            return answer(400, "rejected", "the X-Gitlab-Event header is missing: this is not a GitLab webhook delivery", event: nil)
        }
        let kind: String
        switch event {
        case "Push Hook": kind = "push"
        case "Tag Push Hook": kind = "tag_push"
        default: return answer(200, "ignored", "Kiln builds on Push Hook and Tag Push Hook events, not on \(Validation.printable(event))", event: event)
        }
        let payload: Payload
        do {
            payload = try JSONDecoder().decode(Payload.self, from: Data(buffer: body))
        } catch {
            return answer(400, "rejected", "the body is not the JSON of a GitLab \(event) event", event: event)
        }
        guard let objectKind = payload.object_kind else {
            return answer(400, "rejected", "the body has no object_kind", event: event)
        }
        guard objectKind == kind else {
            if objectKind == "push" || objectKind == "tag_push" {
                return answer(400, "rejected", "object_kind '\(objectKind)' does not match the event '\(event)'", event: event)
            }
            return answer(200, "ignored", "object_kind '\(Validation.printable(objectKind))' is not one Kiln builds", event: event)
        }
        let urls = [payload.project?.git_http_url, payload.project?.git_ssh_url].compactMap { $0 }.filter { !$0.isEmpty }
        guard !urls.isEmpty else {
            return answer(400, "rejected", "the body has no project.git_http_url", event: event)
        }

        // The projects this repository feeds, and which of them the token opens.
        let repositories = Set(urls.map(Self.normalized))
        // An unknown repository gets the same 401 as a wrong token: the webhook tells nobody
        // without a project's token which repositories Kiln builds.
        let projects = try await store.projects(withRepositoryIn: repositories)
        var opened: [Project] = []
        if let token {
            for p in projects {
                // A token that does not open (its key is gone) counts as no match; the reason
                // goes to the log, not to an unauthenticated caller.
                let sealed: String?
                do { sealed = try await secrets.store?.webhookSecret(project: p.name) } catch {
                    logger.error("the webhook token of project \(p.name) does not open: \((error as? KilnError)?.message ?? "\(error)")")
                    continue
                }
                if let secret = sealed ?? p.webhookSecret, !secret.isEmpty, Self.constantTimeEqual(secret, token) { opened.append(p) }
            }
        }
        guard !opened.isEmpty else {
            return answer(401, "rejected", token == nil
                ? "the X-Gitlab-Token header is missing: set the webhook's secret token to the project's webhookSecret"
                : "the X-Gitlab-Token does not match the webhookSecret of a project with this repository (or no project has it: add one with `kiln project add --repository …`)", event: event)
        }

        // The ref and commits: checked before anything is built.
        guard let ref = payload.ref else { return answer(400, "rejected", "the body has no ref", event: event) }
        let prefix = kind == "push" ? "refs/heads/" : "refs/tags/"
        guard ref.hasPrefix(prefix), ref.count > prefix.count else {
            return answer(400, "rejected", "ref '\(Validation.printable(ref))' of a \(event) must start with \(prefix)", event: event)
        }
        let name = String(ref.dropFirst(prefix.count))
        do { try Validation.ref(name) } catch let error as KilnError {
            return answer(400, "rejected", error.message, event: event)
        }
        guard let after = payload.after, Self.isSHA(after) else {
            return answer(400, "rejected", "after '\(Validation.printable(payload.after ?? ""))' is not a 40-digit commit id", event: event)
        }
        if after == Self.zeros {
            return answer(200, "ignored", "\(kind == "push" ? "branch" : "tag") \(name) was deleted; nothing to build", event: event)
        }
        guard let sha = payload.checkout_sha, Self.isSHA(sha), sha != Self.zeros else {
            return answer(400, "rejected", "checkout_sha '\(Validation.printable(payload.checkout_sha ?? ""))' is not a 40-digit commit id", event: event)
        }

        let who = (payload.user_username ?? payload.user_name).map { " by \(Validation.printable($0))" } ?? ""
        var wanted = BuildRequest(commit: sha.lowercased())
        var targets = opened
        if kind == "push" {
            wanted.ref = name
            wanted.trigger = "gitlab push to \(name)\(who)"
            targets = opened.filter { $0.builds(branch: name) }
            guard !targets.isEmpty else {
                return answer(200, "ignored", "no project with this repository builds branch \(name) (see each project's branches)", event: event)
            }
        } else {
            wanted.ref = ref
            wanted.tag = Self.imageTag(name)
            wanted.trigger = "gitlab tag \(name)\(who)"
        }
        var created: [String] = [], repeated: [String] = []
        for project in targets {
            let (build, isNew) = try await store.enqueue(project, request: wanted, delivery: delivery, vouchedCommit: true)
            if isNew { created.append(build.id) } else { repeated.append(build.id) }
        }
        if created.isEmpty {
            return answer(200, "duplicate", "this delivery was received before; its builds: \(repeated.joined(separator: ", "))", event: event, builds: repeated)
        }
        return answer(201, "queued", nil, event: event, builds: created + repeated)
    }

    private func answer(_ status: Int, _ outcome: String, _ reason: String?, event: String?, builds: [String]? = nil) -> Response {
        metrics.webhookDelivery(result: status >= 400 ? String(status) : outcome)
        var metadata: Logger.Metadata = ["event": "\(event.map(Validation.printable) ?? "-")", "status": "\(status)", "result": "\(outcome)"]
        if let reason { metadata["reason"] = "\(reason)" }
        if let builds { metadata["builds"] = "\(builds.joined(separator: ","))" }
        logger.info("gitlab webhook", metadata: metadata)
        return json(Answer(status: outcome, reason: reason, builds: builds), status: HTTPResponse.Status(code: status))
    }

    /// Repository URLs compared without case in the scheme and host, without user information
    /// (`https://deploy@host/…`, `git@host:…`: a credential or login name is not part of which
    /// repository it is), a trailing `/` or `.git`. The scp-like `git@host:group/app` and
    /// `ssh://git@host/group/app` (port 22) are the same repository, as GitLab means them.
    /// The repository index is keyed by this form: a change here needs a new schema of the
    /// index (``IndexMigration/schema``), so that existing entries are written again.
    static func normalized(_ url: String) -> String {
        var s = url.trimmingCharacters(in: .whitespaces)
        while s.hasSuffix("/") { s.removeLast() }
        if s.hasSuffix(".git") { s.removeLast(4) }
        if let range = s.range(of: "://") {
            let scheme = s[..<range.lowerBound].lowercased()
            let afterScheme = s[range.upperBound...]
            let hostEnd = afterScheme.firstIndex(of: "/") ?? afterScheme.endIndex
            var host = afterScheme[..<hostEnd]
            if let at = host.lastIndex(of: "@") { host = host[host.index(after: at)...] }
            var path = afterScheme[hostEnd...]
            var h = host.lowercased()
            if scheme == "ssh" {
                if h.hasSuffix(":22") { h.removeLast(3) }
                while path.hasPrefix("/") { path = path.dropFirst() }
                return "ssh://\(h)/\(path)"
            }
            return "\(scheme)://\(h)\(path)"
        }
        // scp-like [user@]host:path
        if let colon = s.firstIndex(of: ":") {
            var host = s[..<colon]
            if let at = host.lastIndex(of: "@") { host = host[host.index(after: at)...] }
            var path = s[s.index(after: colon)...]
            while path.hasPrefix("/") { path = path.dropFirst() }
            return "ssh://\(host.lowercased())/\(path)"
        }
        return s
    }

    static func isSHA(_ s: String) -> Bool {
        s.utf8.count == 40 && s.utf8.allSatisfy { (48...57).contains($0) || (97...102).contains($0) || (65...70).contains($0) }
    }

    /// Compares every byte whatever the first difference, so the time does not tell how much
    /// of a guessed token was right.
    static func constantTimeEqual(_ a: String, _ b: String) -> Bool {
        let x = Array(a.utf8), y = Array(b.utf8)
        var diff = UInt8(x.count == y.count ? 0 : 1)
        for i in 0..<max(x.count, y.count) {
            diff |= (i < x.count ? x[i] : 0) ^ (i < y.count ? y[i] : 0)
        }
        return diff == 0
    }

    /// A git tag as an image tag: characters Docker does not allow become `-` (`release/1.0`
    /// gives `release-1.0`), at most 128, not starting with `.` or `-`.
    static func imageTag(_ gitTag: String) -> String {
        var t = String(gitTag.map { c -> Character in
            c.isASCII && (c.isLetter || c.isNumber || c == "_" || c == "." || c == "-") ? c : "-"
        }.prefix(128))
        while let f = t.first, f == "." || f == "-" { t.removeFirst() }
        return t.isEmpty ? "tag" : t
    }
}
