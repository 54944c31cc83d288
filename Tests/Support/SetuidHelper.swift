import Foundation
import Processes

/// A static program that, made setuid root, shows whether an exec of it gains root: it prints
/// `SETUID-HELPER uid=U euid=E` and `GAINED-ROOT` when `setuid(0)` then works. The busybox
/// of the test images cannot serve: it drops a setuid bit's privileges itself.
public enum SetuidHelper {
    static let source = """
        #include <stdio.h>
        #include <unistd.h>
        int main(void) {
            printf("SETUID-HELPER uid=%d euid=%d\\n", (int)getuid(), (int)geteuid());
            if (setuid(0) == 0 && getuid() == 0) printf("GAINED-ROOT\\n");
            return 0;
        }

        """

    /// Compiles it (static, so it runs in a busybox image) to `file`, with the C compiler the
    /// Swift toolchain needs anyway (cc, else clang).
    public static func compile(to file: URL) throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("kiln-setuid-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let c = dir.appendingPathComponent("helper.c")
        try source.write(to: c, atomically: true, encoding: .utf8)
        guard let compiler = ["cc", "clang"].first(where: { ManagedProcess.which($0) != nil }) else {
            throw CommandFailed(description: "no C compiler (cc or clang) to make the setuid helper: apt-get install gcc libc6-dev")
        }
        try FileManager.default.createDirectory(at: file.deletingLastPathComponent(), withIntermediateDirectories: true)
        try run(compiler, ["-static", "-Os", "-o", file.path, c.path])
    }
}
