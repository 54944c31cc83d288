import DockerAPI
import Foundation
import KilnCore

/// Streams a started container's output to `log`, every line once and in the order written,
/// and returns the container's exit code once it has stopped.
///
/// podman 4.3's `logs?follow=1` cannot be trusted with the lines themselves. Measured here:
/// `seq 1 200000` came through a follow as 65,419 lines with 679 gaps all along (not only at
/// the end), and a fast build's last lines went missing. Its file reader (nxadm/tail), on
/// reaching the end of the log while conmon writes, sends the cut-off record as a line and
/// jumps to the file's new end, skipping what was written in between. A read WITHOUT follow
/// reads the file to its end and loses nothing.
///
/// So the lines come from reads without follow, each resuming after the last record
/// delivered (`LogCursor`, by the records' timestamps and a count within a second); the
/// follow only rings a bell when there is new output. Reads are at least a second apart, and
/// at least twice as long apart as the last read took (podman reads the whole file each
/// time: 1.6 s for 200,000 lines here), so a flood of output costs the engine at most about
/// a third of its time; the first comes a second after the start, so a step that writes a
/// flood and exits is read once. Once the container has stopped (the follow ended, or the container's
/// state says so, see below), `wait` gives the exit code and one last read delivers the rest:
/// conmon writes all output to the log before it reports the exit.
///
/// The follow stream normally ends when the container does. podman 4.3 can miss that end for
/// a container that exits within milliseconds of starting: seen in the events log here, a
/// compile step `ln -s …` started at .326 and died at .327, and the stream stayed open until
/// the step's time limit two minutes later. So a check of the container's state (one inspect a
/// second) also ends the wait once the container has been stopped for 2 s.
func streamOutput(of id: String, docker: DockerClient, log: @escaping @Sendable (String) -> Void) async throws -> Int {
    var reader = ContainerLogReader(id: id, docker: docker, log: log)
    let ended = Locked(false)
    let (bell, ring) = AsyncStream.makeStream(of: Void.self, bufferingPolicy: .bufferingNewest(1))
    try await withThrowingTaskGroup(of: Void.self) { group in
        group.addTask {
            // Only a bell: what the follow delivers is not used. A broken follow ends the
            // wait too; `wait` below then waits for the container itself.
            do {
                for try await _ in docker.logs(id, follow: true) { ring.yield() }
            } catch is CancellationError {
                throw CancellationError()
            } catch {}
            ended.withLock { $0 = true }
            ring.yield()
        }
        group.addTask {
            var stoppedChecks = 0
            while stoppedChecks < 3 {
                try await Task.sleep(for: .seconds(1))
                let running = (try? await docker.state(of: id))?.running ?? true
                stoppedChecks = running ? 0 : stoppedChecks + 1
            }
            ended.withLock { $0 = true }
            ring.yield()
        }
        defer { group.cancelAll() }
        var rings = bell.makeAsyncIterator()
        // The first read a second after the start: a step that is over by then is read once.
        var nextRead = ContinuousClock.now + .seconds(1)
        while !ended.withLock({ $0 }) {
            // A record held back is read again after the pause even if no new output comes.
            if !reader.cursor.isHolding {
                guard await rings.next() != nil else { break }
            }
            while ContinuousClock.now < nextRead, !ended.withLock({ $0 }) {
                try await Task.sleep(for: min(.milliseconds(50), nextRead - ContinuousClock.now))
            }
            if ended.withLock({ $0 }) { break }
            try await reader.read(final: false)
            nextRead = ContinuousClock.now + max(.seconds(1), reader.lastReadTook * 2)
        }
    }
    try Task.checkCancellation()
    let code = try await docker.wait(id)
    try await reader.read(final: true)
    if reader.cursor.outOfOrder > 0 {
        log("kiln: the container's log went back in time (the clock was set back?): lines written after that may be missing here")
    }
    return code
}
