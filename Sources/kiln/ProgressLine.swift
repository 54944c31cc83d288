import Foundation
import KilnCore
import Synchronization

/// The line under a followed log that says which step runs and for how long. On a terminal it
/// is redrawn in place (and cleared before each piece of log); otherwise it is printed as its
/// own line every 30 s, so a CI log shows that a long step is still going.
final class ProgressLine: Sendable {
    private struct State { var shown = false; var lastPrinted: Date? }
    private let interactive: Bool
    private let state = Mutex(State())

    init(interactive: Bool) { self.interactive = interactive }

    func write(_ text: String) {
        state.withLock { s in
            if interactive && s.shown { FileHandle.standardOutput.write(Data("\r\u{1b}[K".utf8)); s.shown = false }
            FileHandle.standardOutput.write(Data(text.utf8))
        }
    }

    func show(_ b: Build) {
        guard let line = ProgressLine.describe(b, now: Date()) else { return }
        state.withLock { s in
            if interactive {
                FileHandle.standardOutput.write(Data("\r\u{1b}[K\(line)".utf8))
                s.shown = true
            } else if s.lastPrinted.map({ Date().timeIntervalSince($0) >= 30 }) ?? true {
                FileHandle.standardOutput.write(Data("\(line)\n".utf8))
                s.lastPrinted = Date()
            }
        }
    }

    func clear() {
        state.withLock { s in
            if interactive && s.shown { FileHandle.standardOutput.write(Data("\r\u{1b}[K".utf8)); s.shown = false }
        }
    }

    /// `… compile running 12 s (fetch 0.4 s done)`, or why it waits; nil once it has ended.
    static func describe(_ b: Build, now: Date) -> String? {
        switch b.status {
        case .queued:
            return "… queued \(Int(now.timeIntervalSince(b.createdAt))) s\(b.waiting.map { ": \($0)" } ?? "")"
        case .assigned:
            return "… assigned to \(b.agent ?? "an agent"), starting"
        case .running:
            let done = b.steps.filter { $0.status == .succeeded }.map { "\($0.name.rawValue) \(Show.seconds($0.durationMs))" }
            guard let step = b.steps.first(where: { $0.status == .running }) else { return "… running" }
            let elapsed = step.startedAt.map { Int(now.timeIntervalSince($0)) } ?? 0
            return "… \(step.name.rawValue) running \(elapsed) s" + (done.isEmpty ? "" : " (done: \(done.joined(separator: ", ")))")
        case .succeeded, .failed, .cancelled:
            return nil
        }
    }
}
