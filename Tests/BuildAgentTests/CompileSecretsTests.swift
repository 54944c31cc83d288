@testable import BuildAgent
import KilnCore
import Testing

@Suite("Build secrets on the agent: which the build command gets, the schedulers' URLs, what the log says")
struct CompileSecretsTests {
    static let secrets = [
        BuildSecret(name: "NPM_TOKEN", value: "npm-0123456789"),
        BuildSecret(name: "SETTINGS", value: "<settings/>-long", file: true),
        BuildSecret(name: "PROD_KEY", value: "prod-0123456789", protectedOnly: true),
    ]

    @Test("a protected build gets all; otherwise the protected-only ones are left out, saying why")
    func protectedOnly() {
        let all = CompileSecrets.plan(Self.secrets, protectedBuild: true, ref: "main", pinnedCommit: nil)
        #expect(all.given.map(\.name) == ["NPM_TOKEN", "SETTINGS", "PROD_KEY"])
        #expect(all.environment == ["NPM_TOKEN": "npm-0123456789", "PROD_KEY": "prod-0123456789"])
        #expect(all.files.map(\.name) == ["SETTINGS"])
        #expect(all.leftOut.isEmpty)

        let pinned = CompileSecrets.plan(Self.secrets, protectedBuild: false, ref: "main", pinnedCommit: "abc123")
        #expect(pinned.given.map(\.name) == ["NPM_TOKEN", "SETTINGS"])
        #expect(pinned.leftOut.map(\.name) == ["PROD_KEY"])
        #expect(pinned.leftOut.first?.reason.contains("the pinned commit abc123 is not on main") == true)

        let feature = CompileSecrets.plan(Self.secrets, protectedBuild: false, ref: "feature/x", pinnedCommit: nil)
        #expect(feature.leftOut.first?.reason.contains("feature/x is not a protected ref") == true)
    }

    @Test("the protected build is MavenCachePlacement's: a pinned commit counts only when it is on its protected ref")
    func protectedBuildRule() {
        let project = Project(name: "app", repository: "file:///x", buildImage: "i", buildCommand: "true", protectedRefs: ["release/*"])
        #expect(MavenCachePlacement.isProtectedBuild(project: project, ref: "main", pinnedCommit: false, commitOnRef: false))
        #expect(MavenCachePlacement.isProtectedBuild(project: project, ref: "release/1", pinnedCommit: true, commitOnRef: true))
        #expect(!MavenCachePlacement.isProtectedBuild(project: project, ref: "main", pinnedCommit: true, commitOnRef: false))
        #expect(!MavenCachePlacement.isProtectedBuild(project: project, ref: "feature/x", pinnedCommit: false, commitOnRef: false))
    }

    @Test("names that are no environment variable, repeated, or Kiln's own are left out", arguments: [
        ("../../etc/passwd", "not an environment variable name"),
        ("A B", "not an environment variable name"),
        ("KILN_BUILD", "Kiln sets KILN_BUILD itself"),
    ])
    func badNames(_ name: String, _ reason: String) {
        let plan = CompileSecrets.plan([BuildSecret(name: name, value: "value-0123456", file: true)], protectedBuild: true, ref: "main", pinnedCommit: nil)
        #expect(plan.given.isEmpty)
        #expect(plan.leftOut.first?.reason == reason)
    }

    @Test("the first of two secrets of one name wins (the project's before its group's)")
    func firstWins() {
        let plan = CompileSecrets.plan([BuildSecret(name: "T", value: "project-value"), BuildSecret(name: "T", value: "group-value")],
                                       protectedBuild: true, ref: "main", pinnedCommit: nil)
        #expect(plan.environment == ["T": "project-value"])
        #expect(plan.leftOut.map(\.name) == ["T"])
    }

    @Test("an image's registry host, as the engine reads the name", arguments: [
        ("maven:3", "docker.io"), ("team/app:1", "docker.io"), ("localhost/kiln/busybox:1", "localhost"),
        ("127.0.0.1:5000/app:1", "127.0.0.1:5000"), ("Registry.Example.com/a/b@sha256:00", "registry.example.com"),
        ("localhost:5000/x", "localhost:5000"),
    ])
    func registryHost(_ image: String, _ host: String) {
        #expect(ImageRegistry.host(of: image) == host)
    }

    @Test("who the secret files belong to, from the image's USER", arguments: [
        ("", SecretFiles.Owner.agent), ("root", .agent), ("0", .agent), ("0:0", .agent),
        ("1000", .ids(uid: 1000, gid: 0)), ("1000:50", .ids(uid: 1000, gid: 50)),
        ("maven", .engine), ("1000:staff", .engine), ("root:staff", .engine),
    ])
    func owner(_ user: String, _ owner: SecretFiles.Owner) {
        #expect(SecretFiles.Owner(imageUser: user) == owner)
    }

    @Test("--scheduler: http only on loopback, no user information, several in order")
    func schedulerURLs() throws {
        #expect(try SchedulerURLs.parse("http://127.0.0.1:7070/, https://kiln.example.com:8443") == ["http://127.0.0.1:7070", "https://kiln.example.com:8443"])
        #expect(try SchedulerURLs.parse("http://localhost:7070") == ["http://localhost:7070"])
        #expect(try SchedulerURLs.parse("http://[::1]:7070") == ["http://[::1]:7070"])
        for bad in ["http://kiln.example.com:7070", "http://10.0.0.5:7070", "https://agent:token@kiln.example.com", "kiln.example.com:7070",
                    "https://kiln.example.com/?x=1", "", " , ", "https://:7070"] {
            #expect(throws: KilnError.self, "\(bad)") { try SchedulerURLs.parse(bad) }
        }
        let e = #expect(throws: KilnError.self) { try SchedulerURLs.parse("http://kiln.example.com:7070") }
        #expect(e?.message.contains("https://") == true)
    }

    @Test("the build's log names what it received and what was withheld, never a value")
    func summary() {
        let secrets = BuildSecrets(
            git: .token(username: "deploy-bot", token: "glpat-secret-0123"),
            registries: [RegistryLogin(host: "registry.example.com", username: "ci", password: "registry-pass-0123")],
            env: Self.secrets, withheld: ["PROD_ONLY"])
        let lines = BuildRunner.secretsSummary(secrets, ref: "feature/x")
        let text = lines.joined(separator: "\n")
        for value in secrets.maskedValues { #expect(!text.contains(value)) }
        #expect(text.contains("NPM_TOKEN, SETTINGS (file), PROD_KEY"))
        #expect(text.contains("an HTTPS token of user deploy-bot"))
        #expect(text.contains("registry.example.com (user ci)"))
        #expect(lines.last == "secrets withheld (for protected refs only, and feature/x is not one): PROD_ONLY")
        #expect(BuildRunner.secretsSummary(.none, ref: "main") == ["secrets received: none (the project and its group have no git credential, registry login or build secret)"])
    }
}
