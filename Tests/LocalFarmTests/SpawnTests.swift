import Foundation
import KilnTestSupport
import Processes
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// What a spawned child inherits, and how a cancellable child is stopped.
@Suite("Spawn: children's descriptors and their stop")
struct SpawnTests {
    /// The descriptors `ls` found open in /proc/self/fd (it opens one itself to read the folder).
    func childDescriptors(_ output: Data) -> [Int] {
        String(decoding: output, as: UTF8.self).split(whereSeparator: \.isNewline).compactMap { Int($0) }.sorted()
    }

    @Test("a child gets stdin, stdout and stderr only, even where this process left descriptors inheritable")
    func onlyStandardDescriptors() throws {
        // Opened without O_CLOEXEC, as a careless library (or a lock file) would.
        let leaky = open("/dev/null", O_RDONLY)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)  // pipe() sets no close-on-exec either
        defer { close(leaky); close(fds[0]); close(fds[1]) }
        #expect(leaky > 2 && fcntl(leaky, F_GETFD) & FD_CLOEXEC == 0)

        let (status, output) = try Spawn.run("/bin/ls", ["/proc/self/fd"], discardStderr: true)
        #expect(status == 0)
        #expect(childDescriptors(output) == [0, 1, 2, 3], "the child had \(childDescriptors(output)) open")
    }

    @Test("descriptors handed over on purpose still arrive as 3, 4, …; nothing else does")
    func extraDescriptorsStillPass() throws {
        let leaky = open("/dev/null", O_RDONLY)
        let passed = open("/dev/null", O_RDONLY | O_CLOEXEC)
        var out: [Int32] = [0, 0]
        #expect(pipe(&out) == 0)
        defer { close(leaky); close(passed) }
        let pid = try Spawn.start("/bin/ls", ["/proc/self/fd"], stdin: passed, stdout: out[1], stderr: out[1], extraDescriptors: [passed])
        close(out[1])
        var output = Data()
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = read(out[0], &buffer, buffer.count)
            if n <= 0 { break }
            output.append(contentsOf: buffer[0..<n])
        }
        close(out[0])
        #expect(Spawn.wait(pid) == 0)
        #expect(childDescriptors(output) == [0, 1, 2, 3, 4], "the child had \(childDescriptors(output)) open")
    }

    @Test("a cancellable child runs to its end and reports stdout, stderr and status apart")
    func cancellableRuns() async throws {
        let outcome = try await Spawn.runCancellable("/bin/sh", ["-c", "echo out; echo err >&2; exit 7"])
        #expect(outcome.status == 7)
        #expect(String(decoding: outcome.stdout, as: UTF8.self) == "out\n")
        #expect(String(decoding: outcome.stderr, as: UTF8.self) == "err\n")
    }

    @Test("cancelling kills the child's whole group, grandchildren too, at once")
    func cancelKillsTheGroup() async throws {
        let marker = "kiln-spawn-test-\(UUID().uuidString.prefix(8))"
        // The shell starts a grandchild (a shell of its own, with the marker in its command
        // line) that holds stdout open; both must go.
        let task = Task { try await Spawn.runCancellable("/bin/sh", ["-c", "sh -c 'sleep 300; true \(marker)' & wait # \(marker)"]) }
        var found = false
        for _ in 0..<200 where !found {
            try await Task.sleep(for: .milliseconds(20))
            found = processes(containing: marker).count >= 2
        }
        #expect(found, "the child did not start")
        let cancelledAt = ContinuousClock.now
        task.cancel()
        await #expect(throws: CancellationError.self) { _ = try await task.value }
        #expect(ContinuousClock.now - cancelledAt < .seconds(60), "the group outlived the cancel (it sleeps 300 s)")
        #expect(processes(containing: marker).isEmpty)
    }

    @Test("kiln is found: KILN_BIN before the one beside this executable; a missing KILN_BIN is passed over")
    func locateKiln() throws {
        // This test bundle is not kiln, so the process itself is never the answer here.
        #expect(KilnExecutable.locate(environment: ["KILN_BIN": "/bin/true"])?.path == "/bin/true")
        let beside = try #require(KilnExecutable.besideCurrent)
        try #require(FileManager.default.isExecutableFile(atPath: beside.path), "\(beside.path) is missing: swift build --build-tests builds it")
        #expect(KilnExecutable.locate(environment: ["KILN_BIN": "/nonexistent/kiln"]) == beside)
        #expect(KilnExecutable.locate(environment: [:]) == beside)
    }
}
