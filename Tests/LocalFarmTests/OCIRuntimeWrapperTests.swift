import DockerAPI
import Foundation
import KilnTestSupport
import LocalFarm
import Testing

/// `kiln oci-runtime` as the runtime of a real podman service (a root of its own, with a pids
/// limit of 64 to tell the wrapper's limit from any default).
@Suite("kiln oci-runtime in front of podman's runc", .serialized)
struct OCIRuntimeWrapperTests {
    static let probe = "grep NoNewPrivs /proc/self/status; cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max"

    func withService(_ body: @escaping @Sendable (PodmanService, DockerClient) async throws -> Void) async throws {
        let root = URL(fileURLWithPath: "/var/tmp/kiln-test/podman-scratch-\(UUID().uuidString.prefix(8))")
        defer { try? PodmanService.removeStorage(root: root) }
        let service = try await PodmanService.start(root: root, pidsLimit: 64)
        defer { service.stop() }
        try service.ensureBusyboxImage(busyboxImage)
        try await withTimeout(.seconds(240)) { try await body(service, DockerClient(socketPath: service.socketPath)) }
    }

    /// Runs `spec` to its end; its output lines.
    func output(_ docker: DockerClient, _ spec: ContainerSpec) async throws -> [String] {
        let id = try await docker.createContainer(spec, name: nil)
        do {
            try await docker.start(id)
            _ = try await docker.wait(id)
            var lines: [String] = []
            for try await line in docker.logs(id, follow: false) { lines.append(line) }
            try await docker.remove(id, force: true)
            return lines
        } catch {
            try? await docker.remove(id, force: true)
            throw error
        }
    }

    @Test("containers of the API get no-new-privileges and at most the service's pids limit; a lower one is kept")
    func containers() async throws {
        try await withService { service, docker in
            let conf = try String(contentsOf: service.root.appendingPathComponent("containers.conf"), encoding: .utf8)
            #expect(conf.contains(#"runtime = "\#(service.root.path)/oci-runtime/runc""#))
            for (asked, seen) in [(nil, "64"), (32, "32"), (1000, "64")] as [(Int?, String)] {
                let spec = ContainerSpec(image: busyboxImage, cmd: ["sh", "-c", Self.probe], pidsLimit: asked)
                #expect(try await output(docker, spec) == ["NoNewPrivs:\t1", seen], "pids limit asked: \(asked.map(String.init) ?? "none")")
            }
            // kiln runs on a thread that blocks signals: none of that may reach the container
            // (a container's process with SIGTERM blocked would not stop until killed).
            let signals = ContainerSpec(image: busyboxImage, cmd: ["grep", "^SigBlk", "/proc/self/status"])
            let blocked = try await output(docker, signals)
            #expect(blocked == ["SigBlk:\t0000000000000000"], "\(blocked)")
        }
    }

    @Test("RUN steps of POST /build: no-new-privileges (a setuid-root binary run as a user gains nothing, and does without the wrapper), the pids limit stops a fork bomb")
    func buildSteps() async throws {
        let dir = try TempDir("oci-build")
        try SetuidHelper.compile(to: dir.path("context/setuid-helper"))
        func dockerfile(_ probe: String) -> String {
            """
            FROM \(busyboxImage)
            COPY setuid-helper /setuid-helper
            RUN chown 0:0 /setuid-helper && chmod 4755 /setuid-helper && \(probe)
            USER 1000:1000
            RUN /setuid-helper
            """
        }
        try dockerfile(Self.probe).write(to: dir.path("context/Dockerfile"), atomically: true, encoding: .utf8)
        // (Without the wrapper a RUN step has no pids cgroup file to read.)
        try dockerfile("grep NoNewPrivs /proc/self/status").write(to: dir.path("context/control.Dockerfile"), atomically: true, encoding: .utf8)
        try "FROM \(busyboxImage)\nRUN i=0; while [ $i -lt 200 ]; do sleep 30 & i=$((i+1)); done; echo ALL-'FORKED'\n"
            .write(to: dir.path("context/bomb.Dockerfile"), atomically: true, encoding: .utf8)

        try await withService { service, docker in
            let lines = Lines()
            let tag = "localhost/kiln/test-oci:\(UUID().uuidString.prefix(8).lowercased())"
            _ = try await docker.build(contextDirectory: dir.path("context"), tag: tag) { lines.append($0) }
            #expect(lines.all.contains("NoNewPrivs:\t1"), "\(lines.all)")
            #expect(lines.all.contains("64"), "\(lines.all)")
            #expect(lines.all.contains("SETUID-HELPER uid=1000 euid=1000"), "\(lines.all)")
            #expect(!lines.all.contains("GAINED-ROOT"))

            let bomb = Lines()
            await #expect(throws: DockerError.self) {
                _ = try await docker.build(contextDirectory: dir.path("context"), dockerfile: "bomb.Dockerfile", tag: tag + "-bomb") { bomb.append($0) }
            }
            #expect(!bomb.all.contains("ALL-FORKED"))
            #expect(bomb.all.contains { $0.contains("can't fork") }, "\(bomb.all)")

            // The control: the same steps with runc itself as the runtime. The helper gains
            // root there, so its failing above is the wrapper's doing.
            let script = service.root.appendingPathComponent("oci-runtime/runc")
            let wrapper = try String(contentsOf: script, encoding: .utf8)
            func replaceScript(_ text: String) throws {
                try text.write(to: script, atomically: true, encoding: .utf8)
                try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: script.path)
            }
            try replaceScript("#!/bin/sh\nexec \(ManagedProcess.which("runc")!) \"$@\"\n")
            defer { try? replaceScript(wrapper) }
            let control = Lines()
            _ = try await docker.build(contextDirectory: dir.path("context"), dockerfile: "control.Dockerfile", tag: tag + "-control") { control.append($0) }
            #expect(control.all.contains("NoNewPrivs:\t0"), "\(control.all)")
            #expect(control.all.contains("GAINED-ROOT"), "\(control.all)")
            for t in [tag, tag + "-control"] { try await docker.removeImage(t, force: true) }
        }
    }

    @Test("a wrapper whose kiln is gone starts no container at all")
    func failsClosed() async throws {
        try await withService { service, docker in
            try OCIRuntimeWrapper.install(in: service.root.appendingPathComponent("oci-runtime"), kiln: "/nonexistent/kiln",
                                          runtime: ManagedProcess.which("runc")!, pidsLimit: 64)
            let id = try await docker.createContainer(ContainerSpec(image: busyboxImage, cmd: ["echo", "RAN"]), name: nil)
            await #expect(throws: DockerError.self) { try await docker.start(id) }
            var lines: [String] = []
            for try await line in docker.logs(id, follow: false) { lines.append(line) }
            #expect(!lines.contains("RAN"))
            try await docker.remove(id, force: true)
        }
    }
}
