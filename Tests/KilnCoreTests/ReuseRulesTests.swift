import Foundation
import KilnCore
import Testing

/// The reuse key's text and the decision who reuses whom (docs/reuse.md), without an agent.
struct ReuseRulesTests {
    static let project = Project(name: "shop", repository: "http://git/shop.git", buildImage: "localhost/jdk:1", buildCommand: "mvn -B -q package")
    static let tree = String(repeating: "a", count: 40)
    static let image = "sha256:" + String(repeating: "b", count: 64)

    static func text(_ p: Project = project, tree: String = tree, buildImage: String = image, bases: [String] = ["sha256:c"], mvncache: Bool = true,
                     secrets: [String] = [], logins: [String] = []) -> String {
        BuildInputs.canonicalText(project: p, tree: tree, buildImage: buildImage, baseImages: bases, mvncache: mvncache, secretNames: secrets, registryLogins: logins)
    }

    @Test func everyInputChangesTheText() {
        let base = Self.text()
        var other = Self.project
        other.name = "shop2"
        var grouped = Self.project
        grouped.group = "team"
        var command = Self.project
        command.buildCommand = "mvn -B package"
        var dockerfile = Self.project
        dockerfile.dockerfile = "docker/Dockerfile"
        var context = Self.project
        context.context = "app"
        var caches = Self.project
        caches.caches = ["/root/.m2", "/root/.gradle"]
        var pushTo = Self.project
        pushTo.pushTo = ["registry.example.com/shop"]
        let variants = [
            Self.text(other), Self.text(grouped), Self.text(command), Self.text(dockerfile), Self.text(context), Self.text(caches), Self.text(pushTo),
            Self.text(tree: String(repeating: "d", count: 40)), Self.text(buildImage: "sha256:" + String(repeating: "e", count: 64)),
            Self.text(bases: ["sha256:f"]), Self.text(bases: []), Self.text(bases: ["sha256:c", "sha256:c"]), Self.text(mvncache: false),
            Self.text(secrets: ["TOKEN"]), Self.text(logins: ["registry.example.com"]),
        ]
        for (i, v) in variants.enumerated() { #expect(v != base, "variant \(i) gives the same text") }
        #expect(Set(variants).count == variants.count)
        // The same inputs give the same text, whatever the order secrets come in.
        #expect(Self.text(secrets: ["A", "B"]) == Self.text(secrets: ["B", "A"]))
        // With the caches off, the declared folders do not matter (none is mounted).
        #expect(Self.text(mvncache: false) == Self.text(caches, mvncache: false))
    }

    @Test func aValueCannotForgeAnotherLine() {
        // A build command that holds a line end and what would be the next input's line.
        var sneaky = Self.project
        sneaky.buildCommand = "make\ndockerfile=Dockerfile"
        var plain = Self.project
        plain.buildCommand = "make"
        let forged = Self.text(sneaky)
        #expect(forged.contains("buildCommand=make\\ndockerfile=Dockerfile\n"))
        #expect(forged.split(separator: "\n").count == Self.text(plain).split(separator: "\n").count)
        var slash = Self.project
        slash.buildCommand = "a\\nb"
        #expect(Self.text(slash) != forged.replacingOccurrences(of: "make", with: "a"))
    }

    @Test func keysAreChecked() {
        #expect(BuildInputs.isValidKey("sha256:" + String(repeating: "0", count: 64)))
        #expect(!BuildInputs.isValidKey("sha256:" + String(repeating: "A", count: 64)))
        #expect(!BuildInputs.isValidKey("sha256:../" + String(repeating: "0", count: 61)))
        #expect(!BuildInputs.isValidKey(String(repeating: "0", count: 64)))
    }

    static let protectedEntry = ReuseEntry(build: "b1", digest: "sha256:" + String(repeating: "1", count: 64), image: "r/shop:main", protected: true)
    static let sharedEntry = ReuseEntry(build: "b2", digest: "sha256:" + String(repeating: "2", count: 64), image: "r/shop:feat", protected: false)

    static func inputs(protected: Bool) -> BuildInputs {
        BuildInputs(key: "sha256:" + String(repeating: "0", count: 64), tree: tree, buildImage: image, baseImages: [], protected: protected)
    }

    @Test func aProtectedBuildTakesOnlyAProtectedBuildsImage() {
        let p = Self.project
        #expect(ReuseDecision.decide(rebuild: false, project: p, agentAllows: true, inputs: Self.inputs(protected: true), entries: [Self.sharedEntry])
                == .build(reason: "the earlier build with these inputs was of an unprotected ref (its caches are not the protected ones)"))
        #expect(ReuseDecision.decide(rebuild: false, project: p, agentAllows: true, inputs: Self.inputs(protected: true), entries: [Self.sharedEntry, Self.protectedEntry])
                == .reuse(Self.protectedEntry))
        // An unprotected build takes either, the protected one first.
        #expect(ReuseDecision.decide(rebuild: false, project: p, agentAllows: true, inputs: Self.inputs(protected: false), entries: [Self.sharedEntry])
                == .reuse(Self.sharedEntry))
        #expect(ReuseDecision.decide(rebuild: false, project: p, agentAllows: true, inputs: Self.inputs(protected: false), entries: [Self.sharedEntry, Self.protectedEntry])
                == .reuse(Self.protectedEntry))
        #expect(ReuseDecision.decide(rebuild: false, project: p, agentAllows: true, inputs: Self.inputs(protected: false), entries: [])
                == .build(reason: "no earlier successful build has these inputs"))
    }

    @Test func rebuildTheSettingsAndPushToBuildForReal() {
        let entries = [Self.protectedEntry]
        let i = Self.inputs(protected: true)
        var off = Self.project
        off.reuseBuilds = false
        var pushing = Self.project
        pushing.pushTo = ["registry.example.com/shop"]
        #expect(ReuseDecision.decide(rebuild: true, project: Self.project, agentAllows: true, inputs: i, entries: entries) == .build(reason: "a rebuild was asked for"))
        #expect(ReuseDecision.decide(rebuild: false, project: off, agentAllows: true, inputs: i, entries: entries) == .build(reason: "the project's reuseBuilds is off"))
        #expect(ReuseDecision.decide(rebuild: false, project: Self.project, agentAllows: false, inputs: i, entries: entries)
                == .build(reason: "this agent does not reuse builds (--no-reuse-builds)"))
        if case .build = ReuseDecision.decide(rebuild: false, project: pushing, agentAllows: true, inputs: i, entries: entries) {} else { Issue.record("pushTo reused") }
        if case .build = ReuseDecision.decide(rebuild: false, project: Self.project, agentAllows: true, inputs: nil, entries: entries) {} else { Issue.record("no inputs reused") }
        var on = Self.project
        on.reuseBuilds = true
        #expect(ReuseDecision.decide(rebuild: false, project: on, agentAllows: true, inputs: i, entries: entries) == .reuse(Self.protectedEntry))
    }

    @Test func onlyARealSuccessWritesAnEntry() {
        let keys = Keys()
        var b = Build(id: "b9", project: "shop", ref: "main")
        b.inputs = Self.inputs(protected: true)
        b.image = "127.0.0.1:5000/shop:abc1234"
        b.digest = "sha256:" + String(repeating: "9", count: 64)
        b.status = .succeeded
        let written = b.reuseEntry(keys: keys)
        #expect(written?.key == "/kiln/index/reuse/shop/" + String(repeating: "0", count: 64) + "/protected")
        #expect(written?.entry == ReuseEntry(build: "b9", digest: b.digest!, image: b.image!, protected: true))
        for status in [BuildStatus.failed, .cancelled, .running] {
            var other = b
            other.status = status
            #expect(other.reuseEntry(keys: keys) == nil, "\(status)")
        }
        var reused = b
        reused.reusedFrom = "b1"
        #expect(reused.reuseEntry(keys: keys) == nil)
        var unread = b
        unread.inputs = nil
        #expect(unread.reuseEntry(keys: keys) == nil)
        var badKey = b
        badKey.inputs?.key = "sha256:../../projects/x"
        #expect(badKey.reuseEntry(keys: keys) == nil)
        var shared = b
        shared.inputs?.protected = false
        #expect(shared.reuseEntry(keys: keys)?.key.hasSuffix("/shared") == true)
    }

    @Test func theRecordAndRequestCarryTheNewFields() throws {
        let request = try KilnJSON.decode(BuildRequest.self, from: #"{"ref":"main","rebuild":true}"#)
        #expect(request.rebuild == true)
        #expect(try KilnJSON.decode(BuildRequest.self, from: "{}").rebuild == nil)
        let p = try KilnJSON.decode(Project.self, from: #"{"name":"p","repository":"http://h/r.git","buildImage":"a:1","buildCommand":"make","reuseBuilds":false}"#)
        #expect(p.reuseBuilds == false)
        #expect(try KilnJSON.encode(p).contains(#""reuseBuilds":false"#))
        var b = Build(id: "b1", project: "p", ref: "main", createdAt: Date(timeIntervalSince1970: 1_700_000_000))
        b.reusedFrom = "b0"
        b.inputs = Self.inputs(protected: false)
        let decoded = try KilnJSON.decode(Build.self, from: try KilnJSON.encode(b))
        #expect(decoded == b)
    }
}
