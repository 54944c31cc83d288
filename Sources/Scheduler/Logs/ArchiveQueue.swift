import KilnCore

/// Which builds the archiver looks at next, and when a failed one is tried again. Pure: the
/// caller passes the time.
///
/// Rules, in order:
/// 1. A build offered is due at once, unless it is waiting out a failure's delay: then it
///    keeps that time (the archive is down; a new chunk of the build does not hurry it).
/// 2. `take` hands out the build that has been due longest, and only a due one; a build
///    handed out and offered again (another chunk ended meanwhile) is due again.
/// 3. A failure puts the build back after `retryAfter`, doubled with each failure in a row
///    up to `retryAtMost`; a success forgets its failures.
/// 4. A build is never lost from the queue by a failure: builds never wait for the archive,
///    and the archive never gives up on a build.
struct ArchiveQueue: Sendable {
    let retryAfter: Duration
    let retryAtMost: Duration
    private var due: [String: ContinuousClock.Instant] = [:]
    private var failures: [String: Int] = [:]

    init(retryAfter: Duration, retryAtMost: Duration) {
        self.retryAfter = retryAfter
        self.retryAtMost = max(retryAtMost, retryAfter)
    }

    /// Builds waiting (due now or later).
    var count: Int { due.count }
    /// Builds whose last pass failed.
    var failing: Int { failures.count }

    /// Rule 1.
    mutating func offer(_ build: String, now: ContinuousClock.Instant) {
        if let at = due[build], at > now, failures[build] != nil { return }
        due[build] = min(due[build] ?? now, now)
    }

    /// Rule 2: the build due longest, removed from the queue; nil when none is due.
    mutating func take(now: ContinuousClock.Instant) -> String? {
        guard let (build, at) = due.min(by: { $0.value < $1.value || ($0.value == $1.value && $0.key < $1.key) }), at <= now else { return nil }
        due[build] = nil
        return build
    }

    /// Rule 3: the build is tried again after the returned delay.
    @discardableResult
    mutating func failed(_ build: String, now: ContinuousClock.Instant) -> Duration {
        let n = (failures[build] ?? 0) + 1
        failures[build] = n
        var delay = retryAfter
        for _ in 1..<min(n, 32) where delay < retryAtMost { delay = delay * 2 }
        delay = min(delay, retryAtMost)
        due[build] = now + delay
        return delay
    }

    /// Rule 3: the failures in a row so far (after a `failed`, this one's number).
    func failures(of build: String) -> Int { failures[build] ?? 0 }

    /// Rule 3.
    mutating func succeeded(_ build: String) {
        failures[build] = nil
    }
}

/// What one archive pass of a build does, decided from its record and the chunks in etcd.
/// Pure.
///
/// Rules, in order:
/// 1. No record, or one that does not decode: nothing (chunks of a build without a record
///    are not the archiver's to judge; retention deletes record and chunks together).
/// 2. A build that has not ended, or whose pipeline run is pending or running: nothing yet
///    (the end of its log, or of its run, offers it again).
/// 3. Chunks named after the record's mark (or every chunk, without one): archive them after
///    the mark's lines, then delete them and any chunk up to the mark still in etcd.
/// 4. Only chunks up to the mark (a pass deleted part of them and stopped): delete them.
/// 5. No chunk: nothing.
enum ArchivePlan: Equatable {
    case nothing(String)
    /// Store the mark's lines and `fresh`'s, then delete `fresh` and `leftover`.
    case archive(fresh: [String], leftover: [String])
    /// Delete these chunks (all covered by the mark already).
    case delete([String])

    /// `chunks`: the names of the build's chunks in etcd, in key order.
    static func decide(build: Build?, chunks: [String]) -> ArchivePlan {
        guard let build else { return .nothing("no build record") }
        if let why = notYet(build) { return .nothing(why) }
        let mark = build.logArchive.flatMap { $0.isPlausible(on: build) ? $0.through : nil }
        let fresh = chunks.filter { LogNames.isAfter($0, mark) }
        let leftover = chunks.filter { !LogNames.isAfter($0, mark) }
        if !fresh.isEmpty { return .archive(fresh: fresh, leftover: leftover) }
        if !leftover.isEmpty { return .delete(leftover) }
        return .nothing("no chunk in etcd")
    }

    /// Rule 2: why the build's log is not complete yet, or nil when it is.
    static func notYet(_ build: Build) -> String? {
        guard build.status.isFinal else { return "the build has not ended" }
        if let run = build.deploy, !run.status.isFinal { return "its pipeline run \(run.run) is \(run.status.rawValue)" }
        return nil
    }
}
