import Foundation

/// Finds the `kiln` executable, for a process that must start `kiln` itself (an agent's git
/// fetch, the test farms). One rule, so the agent, the tests and `kiln up` cannot drift apart.
public enum KilnExecutable {
    /// This process's own executable, resolved through `/proc/self/exe`.
    public static var current: URL? {
        guard let path = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe") else { return nil }
        return URL(fileURLWithPath: path)
    }

    /// The `kiln` built beside this executable: a test bundle or kiln-bench lives in
    /// `.build/debug/` (or `release/`) next to the `kiln` of the same build.
    public static var besideCurrent: URL? {
        current?.deletingLastPathComponent().appendingPathComponent("kiln")
    }

    /// The `kiln` to start, first found of:
    /// 1. this process, when it is `kiln`;
    /// 2. `KILN_BIN` from the environment;
    /// 3. a `kiln` beside this process's executable (the tests, in `.build/debug/`);
    /// 4. `.build/debug/kiln` under the current folder (a run from the repository).
    ///
    /// Nil when none of them is an executable file: the caller says how to name one.
    public static func locate(environment: [String: String] = ProcessInfo.processInfo.environment) -> URL? {
        let fm = FileManager.default
        var candidates: [URL] = []
        if let me = current, me.lastPathComponent == "kiln" { candidates.append(me) }
        if let bin = environment["KILN_BIN"], !bin.isEmpty { candidates.append(URL(fileURLWithPath: bin)) }
        if let beside = besideCurrent { candidates.append(beside) }
        candidates.append(URL(fileURLWithPath: fm.currentDirectoryPath).appendingPathComponent(".build/debug/kiln"))
        return candidates.first { fm.isExecutableFile(atPath: $0.path) }
    }
}
