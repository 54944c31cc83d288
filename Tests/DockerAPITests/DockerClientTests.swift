import AsyncHTTPClient
import DockerAPI
import Foundation
import KilnTestSupport
import LocalFarm
import Testing

/// Against the real podman service (one at a time on `podmanTestRoot`, hence serialized)
/// and a real registry.
@Suite("DockerClient against podman", .serialized)
struct DockerClientTests {
    @Test("create, start, wait: exit codes 0 and 3, with memory, CPU and network settings")
    func exitCodes() async throws {
        try await withPodman { _, docker in
            try await docker.ping()
            for (command, expected) in [("true", 0), ("exit 3", 3)] {
                let spec = ContainerSpec(
                    image: busyboxImage, cmd: ["sh", "-c", command], workingDir: "/tmp", env: ["A": "1"],
                    networkMode: "none", labels: ["kiln.test": "exit"], memoryBytes: 64 << 20, cpus: 0.5)
                let id = try await docker.createContainer(spec, name: nil)
                try await docker.start(id)
                #expect(try await docker.wait(id) == expected)
                try await docker.remove(id, force: true)
            }
        }
    }

    @Test("logs: stdout and stderr demultiplexed into lines, each stream in order; env and working dir applied")
    func logs() async throws {
        try await withPodman { _, docker in
            let script = "echo out1; echo err1 >&2; echo out2; echo err2 >&2; echo \"$GREETING from $(pwd)\""
            let spec = ContainerSpec(image: busyboxImage, cmd: ["sh", "-c", script], workingDir: "/etc", env: ["GREETING": "hi there"])
            let id = try await docker.createContainer(spec, name: "kiln-test-logs-\(UUID().uuidString.prefix(8))")
            try await docker.start(id)
            #expect(try await docker.wait(id) == 0)
            var lines: [String] = []
            for try await line in docker.logs(id, follow: false) { lines.append(line) }
            #expect(Set(lines) == ["out1", "out2", "err1", "err2", "hi there from /etc"])
            #expect(lines.firstIndex(of: "out1")! < lines.firstIndex(of: "out2")!)
            #expect(lines.firstIndex(of: "err1")! < lines.firstIndex(of: "err2")!)
            var stderrOnly: [String] = []
            for try await line in docker.logs(id, follow: false, stdout: false) { stderrOnly.append(line) }
            #expect(stderrOnly == ["err1", "err2"])
            try await docker.remove(id, force: true)
        }
    }

    @Test("logs(follow:) streams lines while the container runs and ends when it exits")
    func followLogs() async throws {
        try await withPodman { _, docker in
            let spec = ContainerSpec(image: busyboxImage, cmd: ["sh", "-c", "for i in 1 2 3 4; do echo line$i; sleep 0.2; done"])
            let id = try await docker.createContainer(spec, name: nil)
            try await docker.start(id)
            let (lines, code) = try await withThrowingTaskGroup(of: ([String]?, Int?).self) { group in
                group.addTask {
                    var lines: [String] = []
                    for try await line in docker.logs(id, follow: true) { lines.append(line) }
                    return (lines, nil)
                }
                group.addTask { (nil, try await docker.wait(id)) }
                var lines: [String] = []
                var code = -1
                for try await (l, c) in group {
                    if let l { lines = l }
                    if let c { code = c }
                }
                return (lines, code)
            }
            #expect(code == 0)
            #expect(lines == ["line1", "line2", "line3", "line4"])
            try await docker.remove(id, force: true)
        }
    }

    @Test("reads without follow, each resuming after the last: every line of a flood once and in order, read while it is written and after")
    func logReader() async throws {
        try await withPodman(timeout: .seconds(240)) { _, docker in
            // 200,000 short lines as fast as seq writes them (podman's follow lost two thirds
            // of these here), then a slower stretch with stderr lines and a 100 KiB line that
            // conmon stores in pieces, then an unfinished last line.
            let script = "seq 1 200000; i=0; while [ $i -lt 300 ]; do echo out$i; echo err$i >&2; i=$((i+1)); done; "
                + "head -c 102400 /dev/zero | tr '\\0' L; echo; printf tail"
            let id = try await docker.createContainer(ContainerSpec(image: busyboxImage, cmd: ["sh", "-c", script]), name: nil)
            defer { Task { try? await docker.remove(id, force: true) } }
            let lines = Lines()
            var reader = ContainerLogReader(id: id, docker: docker) { lines.append($0) }
            try await docker.start(id)
            var liveReads = 0
            while (try await docker.state(of: id)).running {
                try await reader.read(final: false)
                liveReads += 1
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(try await docker.wait(id) == 0)
            let clock = ContinuousClock()
            let finalRead = try await clock.measure { try await reader.read(final: true) }
            let all = lines.all
            let stdout = all.filter { !$0.hasPrefix("err") }
            let expected = (1...200_000).map(String.init) + (0..<300).map { "out\($0)" } + [String(repeating: "L", count: 102_400), "tail"]
            #expect(stdout.count == expected.count, "\(stdout.count) stdout lines after \(liveReads) live reads")
            #expect(stdout == expected, "first difference at \(zip(stdout, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset ?? -1)")
            #expect(all.filter { $0.hasPrefix("err") } == (0..<300).map { "err\($0)" })
            print("log reader: \(liveReads) reads while running, the final read took \(finalRead)")
        }
    }

    @Test("a bind mount is writable; a :ro one is not")
    func bindMounts() async throws {
        let dir = try TempDir("bind")
        try "input\n".write(to: dir.path("in/x.txt").creatingParent(), atomically: true, encoding: .utf8)
        try FileManager.default.createDirectory(at: dir.path("out"), withIntermediateDirectories: true)
        try await withPodman { _, docker in
            let spec = ContainerSpec(
                image: busyboxImage, cmd: ["sh", "-c", "cat /in/x.txt > /out/copy.txt && echo written >> /out/copy.txt"],
                binds: ["\(dir.path("out").path):/out", "\(dir.path("in").path):/in:ro"])
            let id = try await docker.createContainer(spec, name: nil)
            try await docker.start(id)
            #expect(try await docker.wait(id) == 0)
            try await docker.remove(id, force: true)
            #expect(try String(contentsOf: dir.path("out/copy.txt"), encoding: .utf8) == "input\nwritten\n")

            let readOnly = ContainerSpec(image: busyboxImage, cmd: ["sh", "-c", "echo no > /in/y.txt"], binds: ["\(dir.path("in").path):/in:ro"])
            let ro = try await docker.createContainer(readOnly, name: nil)
            try await docker.start(ro)
            #expect(try await docker.wait(ro) != 0)
            try await docker.remove(ro, force: true)
            #expect(!FileManager.default.fileExists(atPath: dir.path("in/y.txt").path))
        }
    }

    @Test("stop ends a long-running container promptly; stop and remove twice do not fail")
    func stopAndRemove() async throws {
        try await withPodman { _, docker in
            let id = try await docker.createContainer(ContainerSpec(image: busyboxImage, cmd: ["sleep", "300"]), name: nil)
            try await docker.start(id)
            let clock = ContinuousClock()
            let took = try await clock.measure { try await docker.stop(id, timeoutSeconds: 1) }
            #expect(took < .seconds(60), "stop waited \(took); the container sleeps 300 s")
            #expect([137, 143].contains(try await docker.wait(id)))
            try await docker.stop(id, timeoutSeconds: 1)  // already stopped: 304
            try await docker.remove(id, force: false)
            try await docker.remove(id, force: true)  // gone: 404
            let missing = await #expect(throws: DockerError.self) { try await docker.start(id) }
            #expect(missing?.isNotFound == true)
        }
    }

    @Test("an image that does not exist, and a socket nobody serves, give clear errors")
    func clearErrors() async throws {
        try await withPodman { _, docker in
            let error = await #expect(throws: DockerError.self) {
                _ = try await docker.createContainer(ContainerSpec(image: "localhost/kiln/no-such-image:1", cmd: ["true"]), name: nil)
            }
            #expect(error?.description.contains("no-such-image") == true)
            let missingExists = try await docker.imageExists("localhost/kiln/no-such-image:1")
            let busyboxExists = try await docker.imageExists(busyboxImage)
            #expect(!missingExists)
            #expect(busyboxExists)
        }
        let nobody = DockerClient(socketPath: "/var/tmp/kiln-test/no-such.sock")
        let error = await #expect(throws: DockerError.self) { try await nobody.ping() }
        #expect(error?.description.contains("does not answer") == true)
        #expect(error?.description.contains("/var/tmp/kiln-test/no-such.sock") == true)
    }

    @Test("build from a Dockerfile streams its lines and returns the image id; .dockerignore is honoured")
    func build() async throws {
        let dir = try TempDir("build")
        let context = dir.path("context")
        try "hello from the context\n".write(to: context.appendingPathComponent("hello.txt").creatingParent(), atomically: true, encoding: .utf8)
        try "keep out\n".write(to: context.appendingPathComponent("secret.txt"), atomically: true, encoding: .utf8)
        try "x\n".write(to: context.appendingPathComponent("target/classes/A.class").creatingParent(), atomically: true, encoding: .utf8)
        try "secret.txt\ntarget\n".write(to: context.appendingPathComponent(".dockerignore"), atomically: true, encoding: .utf8)
        try """
            FROM \(busyboxImage)
            COPY . /ctx
            RUN cat /ctx/hello.txt && ls -a /ctx | tr '\\n' ' ' && echo
            """.write(to: context.appendingPathComponent("docker/Dockerfile").creatingParent(), atomically: true, encoding: .utf8)
        try await withPodman { service, docker in
            let tag = "localhost/kiln/test-build:\(UUID().uuidString.prefix(8).lowercased())"
            let lines = Lines()
            let id = try await docker.build(contextDirectory: context, dockerfile: "docker/Dockerfile", tag: tag) { lines.append($0) }
            #expect(id.hasPrefix("sha256:") && id.count == 71)
            #expect(lines.all.contains { $0.contains("STEP 1/3") })
            #expect(lines.all.contains("hello from the context"))
            let listing = try #require(lines.all.first { $0.contains("hello.txt") })
            #expect(!listing.contains("secret.txt"))
            #expect(!listing.contains("target"))
            #expect(try await docker.imageExists(tag))
            try await docker.removeImage(tag, force: true)
            #expect(try await docker.imageExists(tag) == false)
            try await docker.removeImage(tag, force: true)  // gone: not an error
            // forcerm: no build container is left behind
            #expect(try service.podmanCommand(["ps", "-a", "--external", "--format", "{{.Names}}"]).output.contains("working-container") == false)
        }
    }

    @Test("a failing Dockerfile gives a DockerError with the builder's message, and leaves no build container")
    func buildErrors() async throws {
        let dir = try TempDir("build-error")
        try "FROM \(busyboxImage)\nRUN echo about to fail && exit 7\n".write(to: dir.path("fails/Dockerfile").creatingParent(), atomically: true, encoding: .utf8)
        try "FROM \(busyboxImage)\nBOGUS instruction\n".write(to: dir.path("bogus/Dockerfile").creatingParent(), atomically: true, encoding: .utf8)
        try "FROM localhost/kiln/no-such-base:1\n".write(to: dir.path("nobase/Dockerfile").creatingParent(), atomically: true, encoding: .utf8)
        try await withPodman { service, docker in
            let lines = Lines()
            let failed = await #expect(throws: DockerError.self) {
                _ = try await docker.build(contextDirectory: dir.path("fails"), tag: "localhost/kiln/test-fail:1") { lines.append($0) }
            }
            #expect(failed?.message.contains("exit status 7") == true)
            #expect(lines.all.contains("about to fail"))
            let bogus = await #expect(throws: DockerError.self) {
                _ = try await docker.build(contextDirectory: dir.path("bogus"), tag: "localhost/kiln/test-fail:2") { _ in }
            }
            #expect(bogus?.message.contains("BOGUS") == true)
            let nobase = await #expect(throws: DockerError.self) {
                _ = try await docker.build(contextDirectory: dir.path("nobase"), tag: "localhost/kiln/test-fail:3") { _ in }
            }
            #expect(nobase?.message.contains("no-such-base") == true)
            let missing = await #expect(throws: DockerError.self) {
                _ = try await docker.build(contextDirectory: dir.path("fails"), dockerfile: "Nope.Dockerfile", tag: "x:1") { _ in }
            }
            #expect(missing?.message.contains("Nope.Dockerfile") == true)
            let escaping = await #expect(throws: DockerError.self) {
                _ = try await docker.build(contextDirectory: dir.path("fails"), dockerfile: "../bogus/Dockerfile", tag: "x:1") { _ in }
            }
            #expect(escaping?.message.contains("inside") == true)
            let containers = try service.podmanCommand(["ps", "-a", "--external", "--format", "{{.Names}}"]).output
            #expect(!containers.contains("working-container"))
        }
    }

    @Test("push to a real registry: the digest from the stream equals the registry's, and podman pulls it back")
    func pushAndPull() async throws {
        let dir = try TempDir("registry")
        let registry = try await RegistryServer.start(root: dir.path("registry"))
        defer { registry.stop() }
        let context = dir.path("context")
        try "FROM \(busyboxImage)\nRUN echo \(UUID().uuidString) > /stamp\n".write(to: context.appendingPathComponent("Dockerfile").creatingParent(), atomically: true, encoding: .utf8)
        try await withPodman { service, docker in
            let repository = "\(registry.address)/kiln/test-app"
            let tag = "abc1234"
            _ = try await docker.build(contextDirectory: context, tag: "\(repository):\(tag)") { _ in }
            let lines = Lines()
            let streamed = try await docker.push(image: repository, tag: tag, insecure: true) { lines.append($0) }
            #expect(!lines.all.isEmpty)
            let digest = try await DockerClient.registryDigest(registry: registry.address, repository: "kiln/test-app", tag: tag, insecure: true)
            #expect(digest.hasPrefix("sha256:") && digest.count == 71)
            let fromStream = try #require(streamed, "the push stream named no digest: \(lines.all)")
            #expect(fromStream == digest)

            try await docker.removeImage("\(repository):\(tag)", force: true)
            let pulled = try service.podmanCommand(["pull", "--tls-verify=false", "\(repository)@\(digest)"])
            #expect(pulled.status == 0, "\(pulled.output)")
            let run = try service.podmanCommand(["run", "--rm", "\(repository)@\(digest)", "cat", "/stamp"])
            #expect(run.status == 0 && !run.output.isEmpty, "\(run.output)")
            try service.podmanCommand(["rmi", "--force", "\(repository)@\(digest)"])

            let missing = await #expect(throws: DockerError.self) {
                _ = try await DockerClient.registryDigest(registry: registry.address, repository: "kiln/test-app", tag: "nope", insecure: true)
            }
            #expect(missing?.isNotFound == true)
        }
    }

    @Test("push to an address where nothing listens fails with a clear error")
    func pushNowhere() async throws {
        try await withPodman { service, docker in
            let refusing = try FreePort.refusing()
            defer { withExtendedLifetime(refusing) {} }  // held until the test ends
            let port = refusing.port
            let name = "127.0.0.1:\(port)/kiln/nowhere"
            #expect(try service.podmanCommand(["tag", busyboxImage, "\(name):1"]).status == 0)
            let error = await #expect(throws: DockerError.self) {
                _ = try await docker.push(image: name, tag: "1", insecure: true) { _ in }
            }
            #expect(error?.message.contains("connection refused") == true, "\(String(describing: error))")
            try await docker.removeImage("\(name):1", force: false)
            let notBuilt = await #expect(throws: DockerError.self) {
                _ = try await docker.push(image: "\(name)-never-built", tag: "1", insecure: true) { _ in }
            }
            #expect(notBuilt?.isNotFound == true)
        }
    }
}

extension URL {
    /// Creates the folder this file goes in, and returns the file's URL.
    func creatingParent() throws -> URL {
        try FileManager.default.createDirectory(at: deletingLastPathComponent(), withIntermediateDirectories: true)
        return self
    }
}
