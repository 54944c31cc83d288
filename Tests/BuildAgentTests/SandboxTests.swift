@testable import BuildAgent
import DockerAPI
import Foundation
import KilnCore
import KilnTestSupport
import Testing

@Suite("The build sandbox: Dockerfile policy, cache placement, file:// repositories, paths")
struct SandboxTests {
    // MARK: DockerfilePolicy

    @Test("instructions the builder runs outside the sandbox are refused, however they are written", arguments: [
        "FROM x\nRUN --mount=type=cache,id=../../..,target=/h ls /h",
        "FROM x\nrun --mount=type=bind,source=/,target=/h ls",
        "FROM x\nRUN \\\n  --mount=type=cache,target=/c true",
        "FROM x\nRUN \\\n\n  --mount=type=cache,target=/c true",
        "FROM x\nRUN \\\n# a comment\n  --mount=type=cache,target=/c true",
        "# escape=`\nFROM x\nRUN `\n --mount=type=cache,target=/c true",
        "FROM x\nRUN --network=host wget http://127.0.0.1:2379/",
        "FROM x\nONBUILD RUN --mount=type=cache,id=..,target=/h ls",
        "FROM x\nADD http://127.0.0.1:2379/version /v",
        "FROM x\nadd --chown=1:1 https://example.com/a.tgz /a",
        "FROM x\nARG U=http://127.0.0.1:8080/api/v1/projects\nADD $U /p",
        "FROM x\nADD ${U} /p",
        #"FROM x\#nADD ["http://127.0.0.1:5000/v2/_catalog", "/c"]"#,
        #"FROM x\#nADD --chown=1 ["http://127.0.0.1/", "/c"]"#,
        "FROM x\nONBUILD ADD http://127.0.0.1/ /x",
        // Where two parsers could read one text two ways (found by a hostile review):
        "# syntax=x\n# escape=`\nFROM x\nRUN echo `\nRUN --mount=type=cache,id=../../..,target=/h ls /h",
        "# escape=`x\nFROM x\nRUN echo `\nRUN --mount=type=cache,target=/h ls",
        "\u{FEFF}# escape=`\nFROM x\nRUN echo \\\nRUN --mount=type=cache,target=/h ls",
        "FROM x\nRUN\u{0B}--mount=type=cache,target=/h ls",
        "FROM x\nRUN\u{0C}--mount=type=cache,target=/h ls",
        "FROM x\nRUN true\rRUN --mount=type=cache,target=/h ls",
        "FROM x\nRUN echo \\\u{A0}\nRUN --mount=type=cache,target=/h ls",
        "FROM x\nRUN --mo\\\nunt=type=cache,target=/h ls",
        "FROM x\nRUN \"--mount=type=cache,target=/h\" ls",
        #"FROM x\#nADD http:"//"127.0.0.1:5000/v2/x/blobs/sha256:0 /loot"#,
        #"FROM x\#nADD http:\/\/127.0.0.1:5000/ /loot"#,
        #"FROM x\#nADD ["http:\/\/127.0.0.1/","/x"] junk"#,
        "FROM x\nADD 'http://127.0.0.1/' /x",
        // CRLF line ends (one Character to Swift, so a split by "\n" once saw one line):
        "FROM x\r\nADD http://127.0.0.1:2379/version /v\r\n",
        "# a comment first\r\nFROM x\r\nRUN --mount=type=cache,id=../../..,target=/h ls /h\r\n",
    ])
    func refused(_ dockerfile: String) {
        #expect(DockerfilePolicy.check(dockerfile) != nil, "\(dockerfile)")
    }

    @Test("ordinary Dockerfiles pass", arguments: [
        "FROM localhost/kiln/busybox:1\nCOPY target/app.jar /app.jar\nCMD [\"java\", \"-jar\", \"/app.jar\"]",
        "FROM x\nRUN apt-get install -y curl && echo mount\nADD app.tar.gz /opt/\nADD --chown=1:1 a b /dst/",
        "FROM x\n# RUN --mount=type=cache,target=/c (a comment)\nRUN echo 'ADD http://x/ /y'",
        "FROM x\nENV A=1 \\\n    B=2\nRUN true",
        "# escape=`\nFROM x\nRUN echo a `\n  b",
        "FROM x\r\nRUN echo 'é ü'\r\nLABEL a=\"b\"\r\nADD --chown=1:1 [\"app.tar.gz\", \"/opt/\"]\r\n",
    ])
    func allowed(_ dockerfile: String) {
        #expect(DockerfilePolicy.check(dockerfile) == nil, "\(dockerfile)")
    }

    @Test("a build starts from its own project's images and base images, not another project's in the shared storage", arguments: [
        ("FROM 127.0.0.1:5000/victim@sha256:" + String(repeating: "ab", count: 32), false),
        ("FROM 127.0.0.1:5000/victim:1a2b3c4", false),
        ("FROM localhost:5000/victim:1a2b3c4", false),
        ("FROM localhost/kiln/jre17:1\nCOPY --from=127.0.0.1:5000/victim:v1 /app /app", false),
        ("FROM 9b7adf92fabe", false),
        ("FROM sha256:9b7adf92fabecea8381bb046ce2d959669cff5fd56754054f547df40cab889b2", false),
        ("ARG B=127.0.0.1:5000/victim:v1\nFROM $B", false),
        ("FROM localhost/kiln/jre17:1\nCOPY target/app.jar /app.jar", true),
        ("FROM 127.0.0.1:5000/app:v1", true),
        ("FROM localhost/kiln/jdk17-maven:1 AS build\nRUN true\nFROM localhost/kiln/jre17:1\nCOPY --from=build /x /x", true),
        ("FROM --platform=linux/amd64 busybox:1", true),
        ("# CRLF\r\nFROM localhost/kiln/jre17:1\r\nCOPY --from=127.0.0.1:5000/victim:v1 /app /app\r\n", false),
    ])
    func images(_ dockerfile: String, _ allowed: Bool) {
        let v = DockerfilePolicy.checkImages(dockerfile, registry: "127.0.0.1:5000", project: "app")
        #expect((v == nil) == allowed, "\(dockerfile): \(v?.description ?? "allowed")")
    }

    @Test("the violation names the line the instruction starts on")
    func violationLine() {
        let v = DockerfilePolicy.check("FROM x\n\nRUN true\nRUN \\\n --mount=type=cache,target=/c true\n")
        #expect(v?.line == 4)
        #expect(v?.description.contains("--mount") == true)
    }

    // MARK: MavenCachePlacement

    static let project = Project(name: "app", repository: "http://git/app.git", buildImage: "img", buildCommand: "mvn package",
                                 defaultBranch: "main", protectedRefs: ["release/*", "refs/tags/v*"])

    @Test("the default branch and protected refs use the protected cache; any other ref the shared one", arguments: [
        ("main", true), ("refs/heads/main", true), ("release/1.0", true), ("refs/heads/release/2", true), ("refs/tags/v1.2", true),
        ("feature/x", false), ("main2", false), ("releases", false), ("v1.2", false), ("refs/heads/feature/main", false),
    ])
    func placement(_ ref: String, _ protected: Bool) {
        let choice = MavenCachePlacement.choose(project: SandboxTests.project, ref: ref, pinnedCommit: false, commitOnRef: false)
        #expect(choice.protected == protected)
        #expect(choice.folder == (protected ? "protected/app" : "shared/app"))
    }

    @Test("a pinned commit gets the protected cache only when it is on the protected ref")
    func pinnedCommit() {
        let p = SandboxTests.project
        #expect(MavenCachePlacement.choose(project: p, ref: "main", pinnedCommit: true, commitOnRef: false).folder == "shared/app")
        #expect(MavenCachePlacement.choose(project: p, ref: "main", pinnedCommit: true, commitOnRef: true).folder == "protected/app")
        #expect(MavenCachePlacement.choose(project: p, ref: "feature", pinnedCommit: true, commitOnRef: true).folder == "shared/app")
    }

    @Test("two projects never share a cache folder")
    func perProject() {
        var other = SandboxTests.project
        other.name = "other"
        for ref in ["main", "feature"] {
            #expect(MavenCachePlacement.choose(project: other, ref: ref, pinnedCommit: false, commitOnRef: false).folder
                != MavenCachePlacement.choose(project: SandboxTests.project, ref: ref, pinnedCommit: false, commitOnRef: false).folder)
        }
    }

    // MARK: FileRepositories

    @Test("file:// repositories: refused unless allowed, never in the agent's data folder")
    func fileRepositories() {
        let url = "file:///srv/git/a.git"
        #expect(FileRepositories.localPath(of: url) == "/srv/git/a.git")
        #expect(FileRepositories.localPath(of: "file:///srv/git/%2e%2e/x") == "/srv/git/../x")
        #expect(FileRepositories.localPath(of: "http://h/a.git") == nil)
        let none = FileRepositories.refusal(url: url, resolvedPath: "/srv/git/a.git", allowed: [], dataDir: "/var/lib/kiln")
        #expect(none?.contains("--allow-file-repos") == true)
        #expect(FileRepositories.refusal(url: url, resolvedPath: "/srv/git/a.git", allowed: ["/srv/git"], dataDir: "/var/lib/kiln") == nil)
        #expect(FileRepositories.refusal(url: url, resolvedPath: "/srv/gitx/a.git", allowed: ["/srv/git"], dataDir: "/var/lib/kiln")?.contains("outside") == true)
        #expect(FileRepositories.refusal(url: url, resolvedPath: nil, allowed: ["/srv/git"], dataDir: "/var/lib/kiln")?.contains("does not exist") == true)
        // An allowed folder that holds the agent's data: its mirrors stay refused.
        let inData = FileRepositories.refusal(url: url, resolvedPath: "/var/lib/kiln/mirrors/b.git", allowed: ["/var/lib"], dataDir: "/var/lib/kiln")
        #expect(inData?.contains("data folder") == true)
    }

    // MARK: Containment

    @Test("paths are resolved through links and must stay in the checkout")
    func containment() throws {
        let dir = try TempDir("containment")
        let checkout = dir.path("ws")
        let outside = dir.path("cache")
        let fm = FileManager.default
        try fm.createDirectory(at: checkout.appendingPathComponent("app/sub"), withIntermediateDirectories: true)
        try fm.createDirectory(at: outside, withIntermediateDirectories: true)
        try "FROM x\n".write(to: checkout.appendingPathComponent("app/Dockerfile"), atomically: true, encoding: .utf8)
        try "secret".write(to: outside.appendingPathComponent("f"), atomically: true, encoding: .utf8)
        try fm.createSymbolicLink(atPath: checkout.appendingPathComponent("c").path, withDestinationPath: outside.path)
        try fm.createSymbolicLink(atPath: checkout.appendingPathComponent("app/Df").path, withDestinationPath: outside.appendingPathComponent("f").path)
        try fm.createSymbolicLink(atPath: checkout.appendingPathComponent("inner").path, withDestinationPath: "app/sub")
        try fm.createSymbolicLink(atPath: checkout.appendingPathComponent("up").path, withDestinationPath: "../cache")

        #expect(try Containment.resolve("app", in: checkout, what: "context", step: .image).lastPathComponent == "app")
        #expect(try Containment.resolve("inner", in: checkout, what: "context", step: .image).path.hasSuffix("/ws/app/sub"))
        #expect(try Containment.resolve(".", in: checkout, what: "context", step: .image).lastPathComponent == "ws")
        for escaping in ["c", "app/Df", "up", "up/f", "app/../c", "inner/../../c"] {
            let error = #expect(throws: StepFailure.self) { try Containment.resolve(escaping, in: checkout, what: "context", step: .image) }
            #expect(error?.message.contains("leads out of the checkout") == true, "\(escaping): \(String(describing: error))")
        }
        #expect(throws: StepFailure.self) { try Containment.resolve("missing", in: checkout, what: "context", step: .image) }
        #expect(Containment.isInside("/a/b", "/a"))
        #expect(!Containment.isInside("/ab", "/a"))
        #expect(Containment.isInside("/a", "/a/"))
    }

    // MARK: BuildSandbox

    @Test("a project's limits can lower the agent's, never raise them; every container gets the same confinement")
    func sandbox() {
        var p = SandboxTests.project
        p.limits = BuildLimits(memoryBytes: 1 << 40, cpus: 0.5, pids: nil)
        let s = BuildSandbox(network: .bridge, agentLimits: BuildLimits(memoryBytes: 2 << 30, cpus: 2, pids: 512), project: p)
        #expect(s.limits == BuildLimits(memoryBytes: 2 << 30, cpus: 0.5, pids: 512))
        let spec = s.confine(ContainerSpec(image: "img", networkMode: "host"))
        #expect(spec.networkMode == "bridge")
        #expect(spec.memoryBytes == 2 << 30 && spec.cpus == 0.5 && spec.pidsLimit == 512)
        #expect(spec.capDrop == ["ALL"] && spec.capAdd == BuildSandbox.capabilities)
        #expect(spec.securityOptions == ["no-new-privileges"])
        let image = s.imageConfinement(cgroupParent: nil)
        #expect(image.network == .bridge && image.memoryBytes == 2 << 30 && image.cpus == 0.5)
        #expect(image.capDrop == ["ALL"] && image.capAdd == BuildSandbox.capabilities)
    }
}
