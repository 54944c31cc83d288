import Foundation
import KilnCore
import RegistryAuth
import Testing
@testable import Scheduler

@Suite("Registry access: who gets which scope")
struct RegistryAccessTests {
    static func scopes(_ s: String...) -> [ResourceAccess] { s.map { ResourceAccess(scope: $0)! } }

    @Test("the admin gets what it asks for, the catalog included")
    func admin() {
        let asked = Self.scopes("repository:demo:pull,push", "registry:catalog:*", "repository:other:delete")
        #expect(RegistryAccessPolicy.grant(asked, to: .admin("admin")) == asked)
    }

    @Test("an agent gets pull and push on the projects of its current builds only")
    func agent() {
        let agent = RegistryCaller.agent("agent-1", repositories: ["demo"])
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:demo:pull,push"), to: agent) == Self.scopes("repository:demo:pull,push"))
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:other:pull,push"), to: agent).isEmpty, "another project's repository")
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:demo/extra:push"), to: agent).isEmpty, "names match exactly")
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:demo:delete,*"), to: agent).isEmpty)
        #expect(RegistryAccessPolicy.grant(Self.scopes("registry:catalog:*"), to: agent).isEmpty)
        // podman asks for a cross-repository mount with both: only its own comes back.
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:demo:pull,push", "repository:other:pull"), to: agent) == Self.scopes("repository:demo:pull,push"))
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:demo:pull,push"), to: .agent("agent-1", repositories: [])).isEmpty, "no current build: nothing")
    }

    @Test("a deployer gets pull on any repository and nothing else")
    func deployer() {
        let d = RegistryCaller.deployer("deployer")
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:demo:pull,push"), to: d) == Self.scopes("repository:demo:pull"))
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:demo:push", "registry:catalog:*"), to: d).isEmpty)
    }

    @Test("a user gets pull as reporter, push as developer, delete as master; anyone pulls a public group's images")
    func users() {
        let asked = Self.scopes("repository:team/shop:pull,push,delete", "registry:catalog:*")
        func granted(_ role: Role?, public isPublic: Bool = false) -> [ResourceAccess] {
            RegistryAccessPolicy.grant(asked, to: .user("u", rights: ["team/shop": RepositoryRights(role: role, isPublic: isPublic)]))
        }
        #expect(granted(nil).isEmpty && granted(.guest).isEmpty)
        #expect(granted(.reporter) == Self.scopes("repository:team/shop:pull"))
        #expect(granted(.developer) == Self.scopes("repository:team/shop:pull,push"))
        #expect(granted(.master) == Self.scopes("repository:team/shop:pull,push,delete"))
        #expect(granted(.owner) == Self.scopes("repository:team/shop:pull,push,delete"))
        #expect(granted(nil, public: true) == Self.scopes("repository:team/shop:pull"))
        #expect(granted(.guest, public: true) == Self.scopes("repository:team/shop:pull"))
        // A right on one repository is not a right on another the caller did not get rights for.
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:other:pull"), to: .user("u", rights: ["team/shop": RepositoryRights(role: .owner, isPublic: true)])).isEmpty)
        let anonymous = RegistryCaller.anonymous(rights: ["pub/app": RepositoryRights(role: nil, isPublic: true), "priv/app": RepositoryRights(role: nil, isPublic: false)])
        #expect(RegistryAccessPolicy.grant(Self.scopes("repository:pub/app:pull,push", "repository:priv/app:pull"), to: anonymous) == Self.scopes("repository:pub/app:pull"))
    }

    @Test("Kiln's own repositories (kiln_…, the log archive's) are granted to no one, admins included; the rest of a request still is")
    func kilnOwnRepositories() {
        let asked = Self.scopes("repository:kiln_logs/archive:pull,push,delete,*", "repository:kiln_x:pull", "repository:team/shop:pull")
        let rights = ["kiln_logs/archive": RepositoryRights(role: .owner, isPublic: true), "kiln_x": RepositoryRights(role: .owner, isPublic: true),
                      "team/shop": RepositoryRights(role: .owner, isPublic: true)]
        let callers: [RegistryCaller] = [.admin("admin"), .user("u", rights: rights), .anonymous(rights: rights),
                                         .agent("agent-1", repositories: ["kiln_logs/archive", "kiln_x", "team/shop"]), .deployer("d")]
        for caller in callers {
            #expect(RegistryAccessPolicy.grant(asked, to: caller).map(\.name) == ["team/shop"], "\(caller)")
        }
        #expect(RegistryAccessPolicy.isKilnOwn("kiln_logs/archive") && !RegistryAccessPolicy.isKilnOwn("kiln-logs/archive") && !RegistryAccessPolicy.isKilnOwn("team/kiln_logs"))
        // No group or project can take such a name ('_' is refused), so no image is kept out.
        #expect(throws: KilnError.self) { try Validation.groupName("kiln_logs") }
        #expect(throws: KilnError.self) { try Validation.projectName("kiln_logs") }
    }

    @Test("repeated scopes and actions are merged")
    func merged() {
        let asked = Self.scopes("repository:demo:pull", "repository:demo:push,pull", "repository:demo:push")
        #expect(RegistryAccessPolicy.grant(asked, to: .admin("admin")) == Self.scopes("repository:demo:pull,push"))
    }

    @Test("HTTP Basic: parsed when well formed, nil otherwise")
    func basic() {
        let header = "Basic " + Data("agent-1:s3cr:et".utf8).base64EncodedString()
        #expect(BasicAuthorization.parse(header) == UserPassword(user: "agent-1", password: "s3cr:et"))
        #expect(BasicAuthorization.parse("basic " + Data("a:b".utf8).base64EncodedString()) == UserPassword(user: "a", password: "b"))
        for bad in [nil, "", "Bearer abc", "Basic", "Basic !!!", "Basic " + Data("nocolon".utf8).base64EncodedString(), "Basic " + Data(":pw".utf8).base64EncodedString()] {
            #expect(BasicAuthorization.parse(bad) == nil, "\(bad ?? "nil")")
        }
    }
}
