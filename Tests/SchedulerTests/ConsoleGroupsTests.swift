import AsyncHTTPClient
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import NIOCore
import NIOHTTP1
import Processes
import RegistryAuth
@testable import Scheduler
import Testing

/// The groups pages and a group's images against a real registry (Docker Distribution with
/// token authentication, trusting the scheduler's signing key, as `kiln up` runs it) and a
/// scheduler in this process over a real etcd: what each role sees, who may change the
/// visibility and delete a tag, what the registry holds afterwards.
@Suite("Console groups", .serialized)
struct ConsoleGroupsTests {
    /// A registry that trusts `key`, and a scheduler that reaches it with that key.
    func withRegistry(_ body: @escaping @Sendable (SchedulerHarness, RegistryServer, TokenSigningKey) async throws -> Void) async throws {
        let dir = try TempDir("console-groups")
        defer { withExtendedLifetime(dir) {} }
        let key = TokenSigningKey.generate()
        let bundle = dir.url.appendingPathComponent("cert.pem")
        try CredentialFile.write(try key.certificatePEM(), to: bundle.path)
        // The realm is for clients that ask for tokens; here every client signs its own.
        let registry = try await RegistryServer.start(root: dir.url.appendingPathComponent("registry"),
                                                      auth: .init(realm: "http://127.0.0.1:9/auth/token", rootCertBundle: bundle))
        defer { registry.stop() }
        try await withScheduler(configure: { c in
            c.registryTokens = .init(signingKey: key)
            c.registryAPI = .init(url: registry.url + "/")
        }) { h in try await body(h, registry, key) }
    }

    /// Pushes an image of one config and one layer (texts) as `repository:tag` over the
    /// registry's API, with a token `key` signed; returns its digest and its size.
    @discardableResult
    func push(_ registry: some HasURL, _ key: TokenSigningKey, _ repository: String, _ tag: String, layer: String) async throws -> (digest: String, size: Int, manifestSize: Int) {
        let token = try Self.token(key, [ResourceAccess(type: "repository", name: repository, actions: ["pull", "push"])])
        let config = #"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#
        for blob in [config, layer] {
            let start = try await send(.POST, registry.url + "/v2/\(repository)/blobs/uploads/", token: token)
            #expect(start.status == 202, "\(start.body)")
            let location = try #require(start.header("Location"))
            let url = (location.hasPrefix("http") ? location : registry.url + location) + (location.contains("?") ? "&" : "?") + "digest=sha256:" + MachineToken.sha256Hex(blob)
            let put = try await send(.PUT, url, body: blob, contentType: "application/octet-stream", token: token)
            #expect(put.status == 201, "\(put.body)")
        }
        let manifest = """
            {"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",\
            "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:\(MachineToken.sha256Hex(config))","size":\(config.utf8.count)},\
            "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:\(MachineToken.sha256Hex(layer))","size":\(layer.utf8.count)}]}
            """
        let put = try await send(.PUT, registry.url + "/v2/\(repository)/manifests/\(tag)", body: manifest, contentType: "application/vnd.oci.image.manifest.v1+json", token: token)
        #expect(put.status == 201, "\(put.body)")
        return (try #require(put.header("Docker-Content-Digest")), config.utf8.count + layer.utf8.count, manifest.utf8.count)
    }

    /// Pushes an OCI index of two manifests already in `repository` as `repository:tag`.
    func pushIndex(_ registry: some HasURL, _ key: TokenSigningKey, _ repository: String, _ tag: String,
                   of manifests: [(digest: String, size: Int, manifestSize: Int)]) async throws {
        let token = try Self.token(key, [ResourceAccess(type: "repository", name: repository, actions: ["pull", "push"])])
        let entries = zip(manifests, ["amd64", "arm64"]).map { m, arch in
            #"{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"\#(m.digest)","size":\#(m.manifestSize),"platform":{"architecture":"\#(arch)","os":"linux"}}"#
        }
        let index = #"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[\#(entries.joined(separator: ","))]}"#
        let put = try await send(.PUT, registry.url + "/v2/\(repository)/manifests/\(tag)", body: index, contentType: "application/vnd.oci.image.index.v1+json", token: token)
        #expect(put.status == 201, "\(put.body)")
    }

    /// The repository's tags as the registry lists them now.
    func tags(_ registry: some HasURL, _ key: TokenSigningKey, _ repository: String) async throws -> [String] {
        let token = try Self.token(key, [ResourceAccess(type: "repository", name: repository, actions: ["pull"])])
        let r = try await send(.GET, registry.url + "/v2/\(repository)/tags/list", token: token)
        return (try JSONDecoder().decode(TagsList.self, from: Data(r.body.utf8)).tags ?? []).sorted()
    }

    static func token(_ key: TokenSigningKey, _ access: [ResourceAccess]) throws -> String {
        try RegistryToken.sign(RegistryTokenClaims(issuer: "kiln", subject: "test", audience: "kiln-registry", access: access,
                                                   issuedAt: Date(), lifetime: 300, id: Secret.random(bytes: 8)), with: key)
    }

    func send(_ method: HTTPMethod, _ url: String, body: String? = nil, contentType: String? = nil, token: String) async throws -> HTTPReply {
        var request = HTTPClientRequest(url: url)
        request.method = method
        request.headers.add(name: "Authorization", value: "Bearer \(token)")
        if let contentType { request.headers.add(name: "Content-Type", value: contentType) }
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        return HTTPReply(status: Int(response.status.code), body: String(buffer: try await response.body.collect(upTo: 1 << 20)),
                         headers: response.headers.map { ($0.name, $0.value) })
    }

    /// A succeeded build of `project` that pushed `registry/repository:tag@digest`, written as an agent writes it.
    func recordBuild(_ h: SchedulerHarness, project: String, image: String, tag: String, digest: String) async throws -> String {
        let r = try await h.request(.POST, "/api/v1/projects/\(project)/builds", body: #"{"ref":"main","tag":"\#(tag)"}"#)
        let id = try #require(r.json?["id"] as? String, "\(r.body)")
        var b = try await h.build(id)
        b.status = .succeeded
        b.image = image
        b.digest = digest
        b.finishedAt = Date()
        #expect(try await h.etcd.txn(Txn(success: [.delete(h.keys.queued(id)), .put(h.keys.build(id), try KilnJSON.encode(b))])).succeeded)
        return id
    }

    @Test func aGroupsImagesTheirBuildsAndAppsAndDeletingATagAsTheRolesAllow() async throws {
        try await withRegistry { h, registry, key in
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#).status == 201)
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"elsewhere"}"#).status == 201)
            let project = #"{"name":"shop","group":"team","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project).status == 201)
            let v1 = try await push(registry, key, "team/shop", "v1", layer: "the first layer")
            try await push(registry, key, "team/shop", "v1-alias", layer: "the first layer")
            let v2 = try await push(registry, key, "team/shop", "v2", layer: "the second, longer layer")
            try await push(registry, key, "team/base", "latest", layer: "a base image")
            // Both platforms of one tag: their distinct blobs (one config, two layers) count once each.
            let arm = try await push(registry, key, "team/shop", "arm", layer: "the arm layer")
            try await pushIndex(registry, key, "team/shop", "multi", of: [v2, arm])
            let configSize = v1.size - "the first layer".utf8.count
            try await push(registry, key, "elsewhere/thing", "x", layer: "not team's")
            let built = try await recordBuild(h, project: "shop", image: "\(registry.address)/team/shop:v1", tag: "v1", digest: v1.digest)
            // An app whose live version runs v2.
            var app = App(name: "shop-app", project: "shop")
            app.versions = [AppVersion(number: 3, build: built, project: "shop", image: "\(registry.address)/team/shop@\(v2.digest)", backend: "local",
                                       cells: ["local"], settings: DeploySettings(port: 8080), state: .live)]
            try await h.etcd.put(h.keys.app("shop-app"), try KilnJSON.encode(app))
            // And another team's app (its project is not in the group) runs v2 too.
            var theirs = App(name: "their-app", project: "their-project")
            theirs.versions = [AppVersion(number: 1, build: built, project: "their-project", image: "\(registry.address)/team/shop@\(v2.digest)", backend: "local",
                                          cells: ["local"], settings: DeploySettings(port: 8080), state: .live)]
            try await h.etcd.put(h.keys.app("their-app"), try KilnJSON.encode(theirs))

            let (mary, maryToken) = try await ConsoleFormsTests().signIn(h, "mary")
            let (rita, ritaToken) = try await ConsoleFormsTests().signIn(h, "rita")
            let (gus, _) = try await ConsoleFormsTests().signIn(h, "gus")
            let (stranger, _) = try await ConsoleFormsTests().signIn(h, "stranger")
            for (user, role) in [("mary", "master"), ("rita", "reporter"), ("gus", "guest")] {
                #expect(try await h.request(.PUT, "/api/v1/groups/team/members/\(user)", body: #"{"role":"\#(role)"}"#).status == 200)
            }

            // The list: the groups each may see.
            let list = try await mary.get("/ui/groups")
            #expect(list.status == 200 && list.body.contains(#"<a href="/ui/groups/team">team</a>"#) && !list.body.contains("elsewhere"), "\(list.body)")
            #expect(!(try await stranger.get("/ui/groups")).body.contains("/ui/groups/team"))
            #expect(try await stranger.get("/ui/groups/team").status == 404)
            #expect(try await stranger.get("/ui/groups/no-such-group").status == 404)

            // A reader: every repository of the group with its tags, digests, sizes, builds and apps.
            let page = try await rita.get("/ui/groups/team")
            #expect(page.status == 200, "\(page.body)")
            let body = page.body
            #expect(body.contains(#"data-repository="team/shop""#) && body.contains(#"data-repository="team/base""#) && !body.contains("elsewhere/thing"))
            #expect(body.contains(#"<tr data-tag="v1"><td class="tag">v1</td><td><code>\#(v1.digest.prefix(19))</code></td><td>\#(v1.size) B</td><td><a href="/ui/builds/\#(built)">"#), "\(body)")
            #expect(body.contains(#"<tr data-tag="v2">"#) && body.contains("shop-app v3 (live)"))
            #expect(!body.contains("their-app") && body.contains("(an app you have no role on) v1 (live)"), "an app the reader has no role on is not named")
            #expect(!body.contains("registry-note") && !body.contains("Delete…"), "a reporter gets no delete link")
            // A guest: the group and its projects, not its images.
            let guest = try await gus.get("/ui/groups/team").body
            #expect(guest.contains(#"id="no-images""#) && guest.contains(#"<a href="/ui/projects/shop">shop</a>"#) && !guest.contains("data-tag"))
            // The API lists the same.
            let api = try KilnJSON.decode(GroupImages.self, from: try await h.request(.GET, "/api/v1/groups/team/images").body)
            let shopTags = api.repositories.first { $0.name == "team/shop" }?.tags
            #expect(api.fromRegistry && shopTags?.map(\.tag) == ["arm", "multi", "v1", "v1-alias", "v2"] && shopTags?[2].build == built)
            #expect(shopTags?.last?.runningIn == [ImageUse(app: "shop-app", version: 3, state: .live), ImageUse(app: "their-app", version: 1, state: .live)]
                    && shopTags?.last?.size == Int64(v2.size), "the admin sees every app: \(shopTags?.last?.runningIn ?? [])")
            #expect(shopTags?[1].size == Int64(configSize + "the arm layer".utf8.count + "the second, longer layer".utf8.count), "\(shopTags ?? [])")

            // A reporter's delete (form or API) is refused; the registry still has the tag.
            let refused = try await rita.post("/ui/groups/team/images/delete", form: [("csrf", ritaToken), ("repository", "team/shop"), ("tag", "v1")])
            #expect(refused.status == 403 && refused.body.contains("deleting its images needs master"), "\(refused.body)")
            #expect(try await rita.get("/ui/groups/team/images/delete?repository=team/shop&tag=v1").status == 403)
            // A forged one (another site, no token) too.
            #expect(try await mary.post("/ui/groups/team/images/delete", form: [("csrf", maryToken), ("repository", "team/shop"), ("tag", "v1")], origin: .other("http://evil.example")).status == 403)
            #expect(try await mary.post("/ui/groups/team/images/delete", form: [("repository", "team/shop"), ("tag", "v1")]).status == 403)
            #expect(try await tags(registry, key, "team/shop") == ["arm", "multi", "v1", "v1-alias", "v2"])

            // What a live version runs is not deleted, and the page says why.
            let running = try await mary.post("/ui/groups/team/images/delete", form: [("csrf", maryToken), ("repository", "team/shop"), ("tag", "v2")])
            #expect(running.status == 409 && running.body.contains("app shop-app version 3 (live)"), "\(running.body)")
            #expect(try await mary.get("/ui/groups/team/images/delete?repository=team/shop&tag=v2").status == 409)
            // Nor one platform of a multi-platform tag.
            let platform = try await mary.post("/ui/groups/team/images/delete", form: [("csrf", maryToken), ("repository", "team/shop"), ("tag", "arm")])
            #expect(platform.status == 409 && platform.body.contains("is one platform of team/shop:multi"), "\(platform.body)")
            // Hostile names: refused before the registry is asked, escaped.
            for (repository, tag) in [("team/<script>", "v1"), ("elsewhere/thing", "x"), ("team/shop", "<b>x</b>"), ("team/../elsewhere/thing", "x")] {
                let r = try await mary.post("/ui/groups/team/images/delete", form: [("csrf", maryToken), ("repository", repository), ("tag", tag)])
                #expect(r.status == 400 && !r.body.contains("<script>") && !r.body.contains("<b>x</b>"), "\(repository) \(tag): \(r.status) \(r.body)")
            }
            #expect(try await tags(registry, key, "team/shop") == ["arm", "multi", "v1", "v1-alias", "v2"])
            #expect(try await tags(registry, key, "elsewhere/thing") == ["x"])

            // A master: the confirmation names every tag of the digest; the delete takes them.
            let masterPage = try await mary.get("/ui/groups/team").body
            #expect(masterPage.contains(#"href="/ui/groups/team/images/delete?repository=team/shop&amp;tag=v1""#), "\(masterPage)")
            #expect(masterPage.contains("in use") && !masterPage.contains("tag=v2\""), "no delete link for what runs")
            #expect(masterPage.contains("a platform of multi") && !masterPage.contains("tag=arm\""), "nor for a platform of an index")
            let confirm = try await mary.get("/ui/groups/team/images/delete?repository=team/shop&tag=v1")
            #expect(confirm.status == 200 && confirm.body.contains(v1.digest) && confirm.body.contains("the tags v1-alias name the same image"), "\(confirm.body)")
            // The digest the page showed must still be the tag's.
            let stale = try await mary.post("/ui/groups/team/images/delete", form: [("csrf", maryToken), ("repository", "team/shop"), ("tag", "v1"), ("digest", v2.digest)])
            #expect(stale.status == 409 && stale.body.contains("nothing was deleted"))
            // In Chromium, as a person does it: the tag's link, the confirmation, its button.
            let browser = try Browser.launch(try Chromium.path())
            defer { browser.close() }
            let tab = try await browser.attachToPage()
            #expect(try await browser.logIn(h.api, user: "mary", password: ConsoleFormsTests.password, from: "/ui/groups", session: tab) == h.api + "/ui/groups")
            #expect(try await browser.clickLink("a[href='/ui/groups/team']", session: tab) == h.api + "/ui/groups/team")
            try await ConsoleTests().screenshot(browser, tab, "group-images.png")
            let confirmation = try await browser.clickLink("tr[data-tag='v1'] a.delete", session: tab)
            #expect(confirmation.hasPrefix(h.api + "/ui/groups/team/images/delete?"))
            #expect(try await browser.evaluate("document.getElementById('digest').textContent", session: tab) == v1.digest)
            try await ConsoleTests().screenshot(browser, tab, "group-image-delete-confirm.png")
            #expect(try await browser.submit("#delete-image", session: tab) == h.api + "/ui/groups/team/images/delete")
            let notice = try await browser.evaluate("document.getElementById('notice').textContent", session: tab)
            #expect(notice == "Deleted team/shop@\(v1.digest) (tags v1, v1-alias).", "\(notice)")
            #expect(try await browser.evaluate("String(document.querySelector('tr[data-tag=\"v1\"]'))", session: tab) == "null")
            try await ConsoleTests().screenshot(browser, tab, "group-image-deleted.png")
            #expect(try await tags(registry, key, "team/shop") == ["arm", "multi", "v2"])
            let activity = try await h.request(.GET, "/api/v1/projects/shop/activity").body
            #expect(activity.contains("image deleted") && activity.contains("mary"), "\(activity)")

            // The API's delete: the admin removes team/base:latest (the group's own repository).
            let apiDelete = try await h.request(.DELETE, "/api/v1/groups/team/images/base/tags/latest")
            #expect(apiDelete.status == 200 && apiDelete.body.contains("latest"), "\(apiDelete.body)")
            #expect(try await tags(registry, key, "team/base") == [])
            #expect(try await h.request(.DELETE, "/api/v1/groups/team/images/base/tags/latest").status == 404)
        }
    }

    @Test func namesAreCheckedAndHostileValuesEscapedOnTheNewPages() throws {
        for good in ["team/shop", "team/a.b_c-d/e2"] { #expect(throws: Never.self) { try ImagesAPI.checkRepository(good, in: "team") } }
        for bad in ["team", "team/", "team/Shop", "team/../x", "other/shop", "team/-x", "team//x", "team/<b>"] {
            #expect(throws: KilnError.self, "\(bad)") { try ImagesAPI.checkRepository(bad, in: "team") }
        }
        #expect(ImagesAPI.isTag("v1.0_rc-1") && !ImagesAPI.isTag(".x") && !ImagesAPI.isTag("-x") && !ImagesAPI.isTag("a/b") && !ImagesAPI.isTag(String(repeating: "a", count: 129)))
        #expect(ImagesAPI.isDigest("sha256:" + String(repeating: "0f", count: 32)) && !ImagesAPI.isDigest("sha256:" + String(repeating: "0F", count: 32)))
        #expect(Known.repository(of: "127.0.0.1:5000/team/shop:v1") == "team/shop" && Known.repository(of: "registry.example.com/team/shop@sha256:ab") == "team/shop")
        #expect(Known.repository(of: "team/shop:v1") == "team/shop")
        #expect(ConsolePages.imageSize(999) == "999 B" && ConsolePages.imageSize(1_234_567) == "1.2 MB")

        let evil = "<script>alert('x')</script>"
        let viewer = ConsoleViewer(user: evil, admin: false, csrf: "token-1")
        let images = GroupImages(group: Group(name: "team"), projects: [evil], repositories: [
            ImageRepository(name: "team/\(evil)", project: evil, tags: [ImageTag(tag: evil, digest: evil, size: 10, build: evil,
                                                                            runningIn: [ImageUse(app: evil, version: 1, state: .live)], error: evil)]),
        ], fromRegistry: false, registryError: evil)
        let pages = [
            ConsolePages.groups([(Group(name: evil), .owner)], viewer: viewer),
            ConsolePages.group(Group(name: evil), role: .owner, projects: [evil], images: images, actions: GroupActions(mayManage: true, mayDelete: ["team/\(evil)"]),
                               viewer: viewer, notice: evil, error: evil),
            ConsolePages.confirmDelete(group: evil, repository: evil, tag: evil, digest: evil, alsoTagged: [evil], viewer: viewer),
            ConsolePages.members(.project, evil, members: [Member(user: evil, role: .owner)], actions: MemberActions(mayManage: true, mayManageOwners: true),
                                 viewer: viewer, error: evil, typed: (evil, evil)),
            ConsolePages.activity(.app, evil, entries: [ActivityEntry(ActivityEvent(user: evil, action: evil, detail: evil))], viewer: viewer),
        ].map(\.rendered)
        for page in pages {
            #expect(!page.contains("<script>"), "\(page)")
            #expect(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;"))
        }
    }

    /// A registry without authentication whose deletes are off (its configuration's
    /// `storage.delete.enabled: false`): the scheduler asks it without credentials, lists its
    /// images, and a delete is refused with how to turn deletes on; nothing is deleted.
    @Test func aRegistryThatRefusesDeletesIsNamedAsTheReason() async throws {
        let dir = try TempDir("console-groups-nodelete")
        defer { withExtendedLifetime(dir) {} }
        let registry = try await RegistryServer.start(root: dir.url, deletes: false)
        defer { registry.stop() }
        let url = "http://127.0.0.1:\(registry.port)"
        // Any signature will do: this registry checks none.
        let key = TokenSigningKey.generate()
        let digest = try await ConsoleGroupsTests().push(RegistryURL(url: url), key, "team/shop", "v1", layer: "kept").digest
        try await withScheduler(configure: { $0.registryAPI = .init(url: url) }) { h in
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#).status == 201)
            let images = try KilnJSON.decode(GroupImages.self, from: try await h.request(.GET, "/api/v1/groups/team/images").body)
            #expect(images.fromRegistry && images.repositories.first?.tags.first?.digest == digest, "\(images)")
            let refused = try await h.request(.DELETE, "/api/v1/groups/team/images/shop/tags/v1")
            #expect(refused.status == 409 && refused.body.contains("REGISTRY_STORAGE_DELETE_ENABLED=true"), "\(refused.body)")
            #expect(try await h.request(.GET, "/api/v1/groups/team/images").body.contains(digest))
        }
    }

    @Test func visibilityIsChangedByMastersOnlyAndPagesWithoutARegistryComeFromTheBuilds() async throws {
        try await withScheduler { h in
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#).status == 201)
            let project = #"{"name":"shop","group":"team","repository":"http://127.0.0.1:1/shop.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project).status == 201)
            let digest = "sha256:" + String(repeating: "ab", count: 32)
            let built = try await ConsoleGroupsTests().recordBuild(h, project: "shop", image: "127.0.0.1:5000/team/shop:v7", tag: "v7", digest: digest)
            let (mary, maryToken) = try await ConsoleFormsTests().signIn(h, "mary")
            let (rita, ritaToken) = try await ConsoleFormsTests().signIn(h, "rita")
            #expect(try await h.request(.PUT, "/api/v1/groups/team/members/mary", body: #"{"role":"master"}"#).status == 200)
            #expect(try await h.request(.PUT, "/api/v1/groups/team/members/rita", body: #"{"role":"reporter"}"#).status == 200)

            // No registry: the tags the builds pushed, and a note that says so.
            let page = try await rita.get("/ui/groups/team").body
            #expect(page.contains(#"id="registry-note""#) && page.contains("--registry-url") && page.contains(#"<tr data-tag="v7">"#) && page.contains(built), "\(page)")
            #expect(page.contains(#"<b id="visibility">private</b>"#) && !page.contains("visibility-form"))
            let delete = try await h.request(.DELETE, "/api/v1/groups/team/images/shop/tags/v7")
            #expect(delete.status == 503 && delete.body.contains("--registry-url"), "\(delete.body)")

            // A reporter may not change the visibility; a master may, and it is recorded.
            #expect(try await rita.post("/ui/groups/team/visibility", form: [("csrf", ritaToken), ("visibility", "public")]).status == 403)
            #expect(try await mary.post("/ui/groups/team/visibility", form: [("csrf", maryToken), ("visibility", "everyone")]).status == 400)
            #expect(try await SchedulerStore(etcd: h.etcd).group("team").visibility == .private)
            #expect(try await mary.get("/ui/groups/team").body.contains(#"id="visibility-form""#))
            let changed = try await mary.post("/ui/groups/team/visibility", form: [("csrf", maryToken), ("visibility", "public")])
            #expect(changed.status == 303 && changed.header("Location") == "/ui/groups/team")
            #expect(try await SchedulerStore(etcd: h.etcd).group("team").visibility == .public)
            #expect(try await mary.get("/ui/groups/team/activity").body.contains("visibility public"))
            #expect(try await rita.get("/ui/groups").body.contains("<td>public</td>"))
        }
    }
}

struct TagsList: Decodable { var tags: [String]? }

/// Where a test registry answers.
protocol HasURL: Sendable { var url: String { get } }
extension RegistryServer: HasURL {}
struct RegistryURL: HasURL { let url: String }
