import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import NIOHTTP1
@testable import Scheduler
import Sealing
import Testing

/// The API of secrets and credentials against a real scheduler and etcd: who may do what,
/// answers that never carry a value, and a scheduler without a key file.
@Suite("Secrets API", .serialized)
struct SecretsAPITests {
    typealias Action = (name: String, permission: Permission, method: HTTPMethod, path: String, body: String?)

    /// Every set and remove of a project's or group's secrets, and the listing.
    static func actions(_ base: String, git: Bool) -> [Action] {
        var actions: [Action] = [
            ("list the secrets", .listSecrets, .GET, "\(base)/secrets", nil),
            ("set a build secret", .setSecrets, .PUT, "\(base)/secrets/NPM_TOKEN", #"{"value":"npm-token-value-1","protectedOnly":true}"#),
            ("remove a build secret", .setSecrets, .DELETE, "\(base)/secrets/NPM_TOKEN", nil),
            ("set a registry credential", .setSecrets, .PUT, "\(base)/credentials/registry/registry.example.com:5000", #"{"username":"ci","password":"registry-pw-1"}"#),
            ("remove a registry credential", .setSecrets, .DELETE, "\(base)/credentials/registry/registry.example.com:5000", nil),
        ]
        if git {
            actions += [
                ("set the git credential", .setSecrets, .PUT, "\(base)/credentials/git", #"{"username":"deploy","token":"glpat-token-value"}"#),
                ("remove the git credential", .setSecrets, .DELETE, "\(base)/credentials/git", nil),
            ]
        }
        return actions
    }

    /// The same table for a project and a group: each role below owner against each action,
    /// then someone without a role (404, as for a missing resource).
    @Test func theRoleTableHoldsForSecretsOfProjectsAndGroups() async throws {
        try await withScheduler { h in
            let owner = try await IdentityAPITests.user(h, "olga")
            let member = try await IdentityAPITests.user(h, "mia")
            let outsider = try await IdentityAPITests.user(h, "otto")
            #expect(try await h.request(.POST, "/api/v1/groups", body: #"{"name":"team"}"#, token: owner).status == 201)
            let project = #"{"name":"shop","repository":"https://git.example.com/team/shop.git","buildImage":"a:1","buildCommand":"make"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project, token: owner).status == 201)
            for (kind, name, git) in [("projects", "shop", true), ("groups", "team", false)] {
                let base = "/api/v1/\(kind)/\(name)"
                for role in Role.allCases where role != .owner {
                    #expect(try await h.request(.PUT, "\(base)/members/mia", body: #"{"role":"\#(role.rawValue)"}"#, token: owner).status == 200)
                    for a in Self.actions(base, git: git) {
                        if a.method == .DELETE {  // something to remove, set by the owner
                            let set = Self.actions(base, git: git).first { $0.method == .PUT && $0.path == a.path }!
                            #expect(try await h.request(.PUT, set.path, body: set.body, token: owner).status < 300)
                        }
                        let r = try await h.request(a.method, a.path, body: a.body, token: member)
                        if role >= a.permission.minimumRole {
                            #expect((200..<300).contains(r.status), "\(role) of \(name) may \(a.name): \(r.status) \(r.body)")
                        } else {
                            #expect(r.status == 403 && r.body.contains(a.permission.minimumRole.rawValue), "\(role) of \(name) may not \(a.name): \(r.status) \(r.body)")
                        }
                    }
                }
                for a in Self.actions(base, git: git) {
                    let r = try await h.request(a.method, a.path, body: a.body, token: outsider)
                    #expect(r.status == 404, "an outsider's \(a.name) on \(name): \(r.status) \(r.body)")
                }
            }
            // A group's master sets the secrets of the group's projects too (their role is inherited).
            #expect(try await h.request(.PUT, "/api/v1/groups/team/members/otto", body: #"{"role":"master"}"#, token: owner).status == 200)
            #expect(try await h.request(.POST, "/api/v1/projects", body: project.replacingOccurrences(of: #""make""#, with: #""make","group":"team""#), token: owner).status == 200)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/secrets/FROM_GROUP", body: #"{"value":"set-by-a-group-master"}"#, token: outsider).status == 201)

            // Cells' credentials and the reseal: admins only.
            #expect(try await h.request(.PUT, "/api/v1/cells/k1", body: #"{"name":"k1","backend":"kubernetes","endpoint":"https://127.0.0.1:6443"}"#).status == 201)
            let cellCredential = #"{"token":"kube-token-value","certificateAuthority":"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"}"#
            for (method, path, body) in [(HTTPMethod.PUT, "/api/v1/cells/k1/credentials", cellCredential), (.POST, "/api/v1/admin/secrets/reseal", "{}"),
                                         (.DELETE, "/api/v1/cells/k1/credentials", nil)] {
                let refused = try await h.request(method, path, body: body, token: owner)
                #expect(refused.status == 403 && refused.body.contains("only an admin"), "\(path): \(refused.status)")
                #expect((200..<300).contains(try await h.request(method, path, body: body).status), "\(path) as admin")
            }
            #expect(try await h.request(.PUT, "/api/v1/cells/nowhere/credentials", body: cellCredential).status == 404)
        }
    }

    @Test func valuesGoInAndNeverComeOut() async throws {
        try await withScheduler { h in
            let project = #"{"name":"shop","repository":"https://git.example.com/team/shop.git","buildImage":"a:1","buildCommand":"make","webhookSecret":"hook-token-value"}"#
            #expect(try await h.request(.POST, "/api/v1/projects", body: project).status == 201)
            let set = try await h.request(.PUT, "/api/v1/projects/shop/secrets/NPM_TOKEN", body: #"{"value":"npm-token-value-1","file":true}"#)
            #expect(set.status == 201 && !set.body.contains("npm-token-value-1"), "\(set.body)")
            let info = try KilnJSON.decode(SecretInfo.self, from: set.body)
            #expect(info.kind == "env" && info.name == "NPM_TOKEN" && info.scope == "project" && info.file == true && info.updatedBy == "admin")
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/secrets/NPM_TOKEN", body: #"{"value":"npm-token-value-2"}"#).status == 200)
            #expect(try await h.request(.PUT, "/api/v1/projects/shop/credentials/git", body: #"{"sshKey":"-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjE\n-----END OPENSSH PRIVATE KEY-----","knownHosts":"git.example.com ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"}"#).status == 201)

            let listed = try await h.request(.GET, "/api/v1/projects/shop/secrets")
            let shown = try await h.request(.GET, "/api/v1/projects/shop").body + listed.body
                + (try await h.request(.GET, "/api/v1/projects/shop/activity").body)
            for value in ["npm-token-value", "hook-token-value", "b3BlbnNzaC1rZXktdjE"] { #expect(!shown.contains(value), "\(value)") }
            #expect(try KilnJSON.decode([SecretInfo].self, from: listed.body).map { "\($0.kind) \($0.name) \($0.detail ?? "-")" } == [
                "env NPM_TOKEN -", "git git sshKey", "webhook webhook -",
            ])
            let feed = try KilnJSON.decode([ActivityEntry].self, from: try await h.request(.GET, "/api/v1/projects/shop/activity").body)
            #expect(feed.contains { $0.action == "secret added" && $0.detail == "NPM_TOKEN (as a file)" && $0.user == "admin" })
            #expect(feed.contains { $0.action == "secret changed" && $0.detail == "NPM_TOKEN" })
            #expect(feed.contains { $0.action == "git credential added" && $0.detail == "an SSH deploy key" })

            // Bad input: what to do, and nothing written.
            for (path, body, says) in [
                ("secrets/NPM_TOKEN", #"{"value":"short"}"#, "at least 8 characters"),
                ("secrets/NOT-A-NAME", #"{"value":"long enough value"}"#, "environment variable name"),
                ("credentials/git", #"{"username":"u","token":"glpat-token-value","sshKey":"k"}"#, "give either username and token"),
                ("credentials/registry/Bad_Host", #"{"username":"u","password":"registry-pw-1"}"#, "is not a host name"),
            ] {
                let r = try await h.request(.PUT, "/api/v1/projects/shop/\(path)", body: body)
                #expect(r.status == 400 && r.body.contains(says), "\(path): \(r.status) \(r.body)")
            }
            #expect(try await h.request(.DELETE, "/api/v1/projects/shop/secrets/NOPE").status == 404)

            // The webhook token: sealed apart from the record, kept by a save without one, removed by an empty one.
            let record = try #require(try await h.etcd.get(h.keys.project("shop")))
            #expect(!record.string.contains("hook-token-value") && !record.string.contains("webhookSecret"))
            let sealed = try #require(try await h.etcd.get(h.keys.webhookSecret(project: "shop")))
            let resaved = project.replacingOccurrences(of: #","webhookSecret":"hook-token-value""#, with: #","branches":["main"]"#)
            #expect(try await h.request(.POST, "/api/v1/projects", body: resaved).status == 200)
            #expect(try await h.etcd.get(h.keys.webhookSecret(project: "shop"))?.modRevision == sealed.modRevision)
            let emptied = project.replacingOccurrences(of: "hook-token-value", with: "")
            #expect(try await h.request(.POST, "/api/v1/projects", body: emptied).status == 200)
            #expect(try await h.etcd.get(h.keys.webhookSecret(project: "shop")) == nil)
            // A password in the repository URL is refused, without repeating it.
            let withPassword = try await h.request(.POST, "/api/v1/projects", body: project.replacingOccurrences(of: "https://git", with: "https://u:glpat-in-url-1@git"))
            #expect(withPassword.status == 400 && withPassword.body.contains("kiln credential set git") && !withPassword.body.contains("glpat-in-url-1"))
        }
    }

    @Test func aSchedulerWithoutAKeyFileAnswers503SayingWhatToDo() async throws {
        try await withScheduler(secretsKey: false) { h in
            let outsider = try await IdentityAPITests.user(h, "otto")
            #expect(try await h.request(.POST, "/api/v1/projects", body: SchedulerHarness.demoProject).status == 201)
            let r = try await h.request(.PUT, "/api/v1/projects/demo/secrets/NPM_TOKEN", body: #"{"value":"npm-token-value-1"}"#)
            #expect(r.status == 503 && r.body.contains("--secrets-key-file") && r.body.contains("kiln secrets key new"), "\(r.body)")
            #expect(try await h.request(.GET, "/api/v1/projects/demo/secrets").status == 503)
            #expect(try await h.request(.POST, "/api/v1/admin/secrets/reseal", body: "{}").status == 503)
            // Who may not see the project learns nothing from it.
            #expect(try await h.request(.GET, "/api/v1/projects/demo/secrets", token: outsider).status == 404)
            let hook = SchedulerHarness.demoProject.replacingOccurrences(of: "}", with: #","webhookSecret":"hook-token"}"#)
            let refused = try await h.request(.POST, "/api/v1/projects", body: hook)
            #expect(refused.status == 503 && refused.body.contains("--secrets-key-file"))
            #expect(try await h.etcd.range(prefix: h.keys.secrets).kvs.isEmpty)
        }
    }

    @Test func aWrongOrMissingKeyFileStopsTheStartWithWhatToDo() async throws {
        let other = try TempDir("other-farm")
        let otherKey = other.path("secrets-key").path
        try SecretsKeyring.create(at: otherKey)
        // etcd holds another farm's sealed secrets: refused with a key file, and without one.
        let seed: @Sendable (EtcdClient) async throws -> Void = { etcd in
            _ = try await SecretStore(etcd: etcd, keyFile: otherKey).startCheck()
        }
        await #expect { try await withScheduler(prepare: seed) { _ in Issue.record("it started") } } throws: { error in
            "\(error)".contains("does not hold") && "\(error)".contains("same key file")
        }
        await #expect { try await withScheduler(secretsKey: false, prepare: seed) { _ in Issue.record("it started") } } throws: { error in
            "\(error)".contains("has no secrets key file") && "\(error)".contains("--secrets-key-file")
        }
        withExtendedLifetime(other) {}
    }
}
