import DockerAPI
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

@Suite("LocalFarm: registry and podman service", .serialized)
struct LocalFarmTests {
    @Test("a registry on a taken port is a clear FarmError")
    func registryPortTaken() async throws {
        let dir = try TempDir("registry-port")
        let first = try await RegistryServer.start(root: dir.path("a"))
        defer { first.stop() }
        let error = await #expect(throws: FarmError.self) { _ = try await RegistryServer.start(root: dir.path("b"), port: first.port) }
        #expect(error?.description.contains("\(first.port)") == true)
        #expect(error?.description.contains("in use") == true)
    }

    @Test("a podman root is reused: a second start finds the stored image; removeStorage unmounts and deletes")
    func podmanRootReuseAndRemoval() async throws {
        let root = URL(fileURLWithPath: "/var/tmp/kiln-test/podman-scratch-\(UUID().uuidString.prefix(8))")
        defer { try? PodmanService.removeStorage(root: root) }
        let first = try await PodmanService.start(root: root)
        try first.ensureBusyboxImage(busyboxImage)
        let docker = DockerClient(socketPath: first.socketPath)
        let id = try await docker.createContainer(ContainerSpec(image: busyboxImage, cmd: ["true"]), name: nil)
        try await docker.start(id)
        _ = try await docker.wait(id)
        try await docker.remove(id, force: true)
        first.stop()

        let second = try await PodmanService.start(root: root)
        #expect(try await DockerClient(socketPath: second.socketPath).imageExists(busyboxImage))
        second.stop()

        try PodmanService.removeStorage(root: root)
        #expect(!FileManager.default.fileExists(atPath: root.path))
        let mounts = try #require(ProcFile.text("/proc/self/mountinfo"))
        #expect(!mounts.contains(root.path))
    }

    @Test("starting a second service on a root this process already serves is refused")
    func oneServicePerRoot() async throws {
        let root = URL(fileURLWithPath: "/var/tmp/kiln-test/podman-scratch-\(UUID().uuidString.prefix(8))")
        defer { try? PodmanService.removeStorage(root: root) }
        let first = try await PodmanService.start(root: root)
        defer { first.stop() }
        let error = await #expect(throws: FarmError.self) { _ = try await PodmanService.start(root: root) }
        #expect(error?.description.contains("already runs") == true)
    }
}
