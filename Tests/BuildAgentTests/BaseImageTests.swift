@testable import BuildAgent
import DockerAPI
import Foundation
import Testing

@Suite("The build sandbox: base images, their ONBUILD triggers, FROM pinned to the image checked")
struct BaseImageTests {
    static let registry = "127.0.0.1:5000"

    @Test("triggers the image builder would run outside the sandbox are refused, however they are split", arguments: [
        ["RUN --mount=type=cache,id=../../..,target=/h touch /h/pwned"],
        ["RUN echo ok", "run --mount=type=bind,source=/,target=/h ls /h"],
        ["RUN --network=host wget http://127.0.0.1:2379/"],
        ["ADD http://127.0.0.1:2379/version /v"],
        ["COPY --from=127.0.0.1:5000/victim:v1 /app /loot"],
        ["COPY --from=9b7adf92fabe / /loot"],
        // Joined with newlines and read as one Dockerfile, as imagebuilder reads them:
        ["RUN echo \\", "--mount=type=cache,target=/h ls /h"],
        ["# escape=`", "RUN echo `", "RUN --mount=type=cache,id=../..,target=/h ls"],
        ["RUN --mo\\", "unt=type=cache,target=/h ls"],
        ["RUN true\rRUN --mount=type=cache,target=/h ls"],
        ["RUN echo a\nRUN --mount=type=cache,target=/h ls"],
    ])
    func refusedTriggers(_ triggers: [String]) {
        let refusal = DockerfilePolicy.triggerRefusal(triggers, registry: Self.registry, project: "app")
        #expect(refusal != nil, "\(triggers)")
    }

    @Test("harmless triggers pass", arguments: [
        [String](),
        ["RUN echo ok"],
        ["COPY . /src", "RUN make -C /src", "ENV A=1"],
        ["COPY --from=127.0.0.1:5000/app:v1 /x /x", "ADD app.tar.gz /opt/"],
    ])
    func allowedTriggers(_ triggers: [String]) {
        #expect(DockerfilePolicy.triggerRefusal(triggers, registry: Self.registry, project: "app") == nil, "\(triggers)")
    }

    @Test("the refusal names the trigger it found")
    func refusalNamesTrigger() throws {
        let triggers = ["RUN echo ok", "ADD http://127.0.0.1:2379/version /v", "RUN echo later"]
        let refusal = try #require(DockerfilePolicy.triggerRefusal(triggers, registry: Self.registry, project: "app"))
        #expect(refusal.trigger == triggers[1])
        #expect(refusal.reason.contains("host's own network"))
        let split = try #require(DockerfilePolicy.triggerRefusal(["RUN echo ok", "RUN --mo\\", "unt=type=cache,target=/h ls"], registry: Self.registry, project: "app"))
        #expect(split.trigger == "RUN --mo\\" && split.reason.contains("RUN --mo is not allowed"), "\(split)")
        // Found only once quotes are squashed out: the trigger holding it is named.
        let quoted = try #require(DockerfilePolicy.triggerRefusal(["RUN echo ok", #"RUN "--mount=type=cache,target=/h" ls"#], registry: Self.registry, project: "app"))
        #expect(quoted.trigger == #"RUN "--mount=type=cache,target=/h" ls"# && quoted.reason.contains("--mount appears"), "\(quoted)")
    }

    @Test("ONBUILD in the Dockerfile itself, for a later FROM of its stage: its text is checked like any instruction", arguments: [
        "FROM localhost/kiln/busybox:1 AS base\nONBUILD RUN --mount=type=cache,id=../../..,target=/h ls /h\nFROM base\nRUN true",
        "FROM localhost/kiln/busybox:1 AS base\nONBUILD ADD http://127.0.0.1:2379/version /v\nFROM base",
        "FROM localhost/kiln/busybox:1 AS base\nonbuild   run \\\n  --mount=type=cache,target=/h ls\nFROM base",
        "FROM localhost/kiln/busybox:1 AS base\nONBUILD COPY --from=127.0.0.1:5000/victim:v1 / /loot\nFROM base",
    ])
    func stageOnBuild(_ dockerfile: String) {
        let refused = DockerfilePolicy.check(dockerfile) ?? DockerfilePolicy.checkImages(dockerfile, registry: Self.registry, project: "app")
        #expect(refused != nil, "\(dockerfile)")
    }

    @Test("FROM x AS x starts from the image x: it is checked, not taken for a stage")
    func selfNamedStage() {
        let v = DockerfilePolicy.checkImages("FROM 127.0.0.1:5000/victim:v1 AS 127.0.0.1:5000/victim:v1\nRUN true", registry: Self.registry, project: "app")
        #expect(v != nil)
        #expect(DockerfilePolicy.checkImages("FROM localhost/kiln/busybox:1 AS b\nFROM b\nCOPY --from=B /x /x", registry: Self.registry, project: "app") == nil)
    }

    @Test("base images: every FROM but scratch and earlier stages, in any case; a FROM over two lines is refused")
    func baseImages() throws {
        let text = """
            # escape=\\
            FROM localhost/kiln/jdk17-maven:1 AS Build
            RUN true
            FROM scratch AS empty
            from --platform=linux/amd64 build AS again
            FROM\tlocalhost/kiln/jre17:1
            COPY --from=build /x /x
            FROM later
            FROM later AS later
            FROM later
            """
        let bases = try DockerfilePolicy.baseImages(text).get()
        #expect(bases == [
            .init(line: 2, image: "localhost/kiln/jdk17-maven:1"), .init(line: 6, image: "localhost/kiln/jre17:1"),
            .init(line: 8, image: "later"), .init(line: 9, image: "later"),
        ])
        for split in ["FROM \\\n  busybox:1\nRUN true", "# escape=`\nFROM busybox:1 `\n AS b"] {
            guard case .failure(let v) = DockerfilePolicy.baseImages(split) else {
                Issue.record("a FROM over two lines passed: \(split)")
                continue
            }
            #expect(v.message.contains("one line"))
        }
    }

    @Test("pinning puts the image ID in place of each base image's name and leaves every other byte")
    func pinning() throws {
        let id = "sha256:" + String(repeating: "ab", count: 32)
        let hex = String(id.dropFirst(7))
        let text = "# syntax\r\nFROM --platform=linux/amd64   localhost/kiln/busybox:1\tAS  b \r\nRUN echo FROM x\r\n\tfrom busybox:1\r\nFROM b\r\n"
        let pinned = DockerfilePolicy.pinning(text, ids: [2: id, 4: id])
        #expect(pinned == "# syntax\r\nFROM --platform=linux/amd64   \(hex)\tAS  b \r\nRUN echo FROM x\r\n\tfrom \(hex)\r\nFROM b\r\n")
        // What the builder gets passes the policy as the original did, but names IDs only.
        #expect(DockerfilePolicy.check(pinned) == nil)
        #expect(try DockerfilePolicy.baseImages(pinned).get().map(\.image) == [hex, hex])
    }
}
