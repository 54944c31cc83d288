import Foundation
import KilnCore
import Testing

@Suite("A project's caches: which container paths a build may cache into")
struct CachesValidationTests {
    @Test("ordinary cache folders pass", arguments: [
        "/root/.m2", "/root/.gradle", "/root/.npm", "/root/.cache/pip", "/home/build/.cargo", "/var/cache/apt", "/opt/go-mod_1.2",
        "/root", "/library", "/devices", "/user", "/runner", "/tmp/ccache", "/" + String(repeating: "a", count: 99),
    ])
    func accepted(_ path: String) throws {
        try Validation.cachePath(path)
    }

    @Test("hostile and malformed paths are refused, each with its reason", arguments: [
        ("", "empty"), ("root/.m2", "not absolute"), ("~/.m2", "not absolute"), ("/", "root"),
        ("/root/.m2/", "ends with '/'"), ("/root//.m2", "'//'"), ("//root", "'//'"),
        ("/root/../etc", "'..'"), ("/root/./.m2", "'.'"), ("/..", "'..'"), ("/.", "'.'"),
        ("/workspace", "checkout"), ("/workspace/target", "checkout"),
        ("/proc", "/proc"), ("/proc/self", "/proc"), ("/sys/fs/cgroup", "/sys"), ("/dev/shm", "/dev"), ("/etc", "/etc"),
        ("/etc/maven", "/etc"), ("/bin", "/bin"), ("/usr/local/share", "/usr"), ("/lib", "/lib"), ("/lib64", "/lib64"),
        ("/run/secrets", "/run"), ("/var/run", "/var/run"), ("/var/run/docker.sock", "/var/run"), ("/sbin", "/sbin"),
        ("/root/.m2 ", "' '"), ("/root/.m2\n/etc", "'\\u{a}'"), ("/root/a:b", "':'"), ("/root/.m2,ro", "','"),
        ("/root/%2e%2e", "'%'"), ("/root/é", "use only"), ("/root/a\u{0}", "use only"),
        ("/" + String(repeating: "a", count: 100), "longer than 100"),
    ])
    func refused(_ path: String, _ reason: String) {
        do {
            try Validation.cachePath(path)
            Issue.record("'\(path)' passed")
        } catch let e as KilnError {
            #expect(e.message.contains(reason), "\(e.message)")
            #expect(e.message.hasPrefix("cache"))
        } catch {
            Issue.record("\(error)")
        }
    }

    @Test("a list: at most 8, no duplicates, none inside another (whole components)")
    func lists() throws {
        try Validation.caches([])
        try Validation.caches(["/root/.m2", "/root/.m2x", "/root/.gradle", "/root/.npm"])
        try Validation.caches((1...8).map { "/c/\($0)" })
        func message(_ paths: [String]) -> String? {
            do { try Validation.caches(paths); return nil } catch let e as KilnError { return e.message } catch { return "\(error)" }
        }
        #expect(message((1...9).map { "/c/\($0)" })?.contains("at most 8") == true)
        #expect(message(["/root/.m2", "/root/.m2"])?.contains("listed twice") == true)
        #expect(message(["/root", "/root/.m2"]) == "cache '/root/.m2' is inside cache '/root': list only '/root'")
        #expect(message(["/root/.cache/pip", "/root/.cache"]) == "cache '/root/.cache/pip' is inside cache '/root/.cache': list only '/root/.cache'")
        #expect(message(["/root/.m2", "/etc"])?.contains("/etc") == true)
    }

    @Test("the project checks its caches as the field 'caches'; absent is Maven's, empty is none; the JSON round-trips")
    func project() throws {
        var p = Project(name: "tools", repository: "https://example.com/t.git", buildImage: "busybox", buildCommand: "true")
        #expect(p.problems().isEmpty)
        #expect(p.effectiveCaches == ["/root/.m2"])
        p.caches = []
        #expect(p.problems().isEmpty)
        #expect(p.effectiveCaches.isEmpty)
        p.caches = ["/root/.gradle", "/workspace/.cache"]
        #expect(p.problems().map(\.field) == ["caches"])
        #expect(throws: KilnError.self) { try p.validate() }
        p.caches = ["/root/.gradle", "/root/.npm"]
        let back = try KilnJSON.decode(Project.self, from: try KilnJSON.encode(p))
        #expect(back.caches == ["/root/.gradle", "/root/.npm"])
        let old = try KilnJSON.decode(Project.self, from: #"{"name":"a","repository":"https://x/a.git","buildImage":"b","buildCommand":"c"}"#)
        #expect(old.caches == nil && old.effectiveCaches == ["/root/.m2"])
    }
}
