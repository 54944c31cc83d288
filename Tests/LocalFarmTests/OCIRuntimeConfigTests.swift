import Foundation
import KilnTestSupport
import LocalFarm
import Testing

@Suite("OCIRuntimeConfig and OCIRuntimeInvocation: what kiln oci-runtime rewrites and reads")
struct OCIRuntimeConfigTests {
    /// Trimmed from a config.json buildah wrote for a RUN step (podman 4.3.1): no
    /// noNewPrivileges, no pids, and a uint64 no Double holds exactly.
    static let buildahRun = """
        {
        \t"ociVersion": "1.0.2-dev",
        \t"process": {
        \t\t"user": {"uid": 0, "gid": 0},
        \t\t"args": ["/bin/sh", "-c", "grep NoNewPrivs /proc/self/status"],
        \t\t"env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"],
        \t\t"cwd": "/",
        \t\t"capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"]}
        \t},
        \t"root": {"path": "/var/lib/containers/storage/overlay/x/merged"},
        \t"linux": {
        \t\t"resources": {
        \t\t\t"devices": [{"allow": false, "access": "rwm"}],
        \t\t\t"memory": {"limit": 268435456, "swap": 18446744073709551615},
        \t\t\t"cpu": {"quota": 100000, "period": 100000}
        \t\t},
        \t\t"cgroupsPath": "/kiln-agent-1-b-1/steps/buildah-buildah123",
        \t\t"namespaces": [{"type": "pid"}, {"type": "network"}]
        \t}
        }

        """

    func confine(_ text: String, _ limit: Int = 4096) throws -> String? {
        try OCIRuntimeConfig.confine(Array(text.utf8), pidsLimit: limit).map { String(decoding: $0, as: UTF8.self) }
    }

    func json(_ text: String) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    @Test("a RUN step's config gets noNewPrivileges and a pids limit; every other byte stays")
    func buildahConfig() throws {
        let out = try #require(try confine(Self.buildahRun, 512))
        let object = try json(out)
        let process = try #require(object["process"] as? [String: Any])
        #expect(process["noNewPrivileges"] as? Bool == true)
        let resources = try #require((object["linux"] as? [String: Any])?["resources"] as? [String: Any])
        #expect((resources["pids"] as? [String: Any])?["limit"] as? Int == 512)
        // In place: take the two insertions out and the original is back, byte for byte.
        let original = out.replacingOccurrences(of: #""noNewPrivileges":true,"#, with: "")
            .replacingOccurrences(of: #""pids":{"limit":512},"#, with: "")
        #expect(original == Self.buildahRun)
        #expect(out.contains("18446744073709551615"))
        // Confined once, it needs nothing more.
        #expect(try confine(out, 512) == nil)
    }

    @Test("a lower pids limit is kept; a higher, zero, negative, null or non-integer one becomes the wrapper's", arguments: [
        ("100", "100"), ("4096", "4096"), ("4097", "4096"), ("1000000", "4096"), ("0", "4096"), ("-1", "4096"),
        ("null", "4096"), ("1e3", "4096"), ("100.5", "4096"), ("\"5\"", "4096"),
    ])
    func pidsLimits(_ given: String, _ expected: String) throws {
        let text = #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":\#(given)}}}}"#
        let out = try confine(text) ?? text
        #expect(out == #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":\#(expected)}}}}"#)
    }

    @Test("missing or null objects on the way to the limit are made", arguments: [
        (#"{"process":{}}"#, #"{"linux":{"resources":{"pids":{"limit":64}}},"process":{"noNewPrivileges":true}}"#),
        (#"{"process":{},"linux":null}"#, #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":64}}}}"#),
        (#"{"process":{},"linux":{}}"#, #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":64}}}}"#),
        (#"{"process":{},"linux":{"resources":null}}"#, #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":64}}}}"#),
        (#"{"process":{},"linux":{"resources":{"pids":null}}}"#, #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":64}}}}"#),
        (#"{"process":{},"linux":{"resources":{"pids":{}}}}"#, #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":64}}}}"#),
        (#"{"process":{},"linux":{"resources":{"pids":{"limit":null}}}}"#, #"{"process":{"noNewPrivileges":true},"linux":{"resources":{"pids":{"limit":64}}}}"#),
    ])
    func missingObjects(_ given: String, _ expected: String) throws {
        #expect(try confine(given, 64) == expected)
    }

    @Test("noNewPrivileges false becomes true, however the key is spelled as Go's decoder matches it")
    func spellings() throws {
        let pids = #""linux":{"resources":{"pids":{"limit":10}}}"#
        #expect(try confine(#"{"process":{"noNewPrivileges":false},\#(pids)}"#) == #"{"process":{"noNewPrivileges":true},\#(pids)}"#)
        // Go takes the last of duplicate keys and matches keys case-insensitively, after
        // unescaping, with ſ as s and the Kelvin sign as k: each such member is rewritten.
        let sneaky = #"{"process":{"noNewPrivileges":true,"NONEWPRIVILEGES":false,"noNewPrivilege\u0073":0,"noNewPrivilegeſ":null},\#(pids)}"#
        let out = try #require(try confine(sneaky))
        #expect(out == #"{"process":{"noNewPrivileges":true,"NONEWPRIVILEGES":true,"noNewPrivilege\u0073":true,"noNewPrivilegeſ":true},\#(pids)}"#)
        let kelvin = #"{"process":{},"Linux":{"Resources":{"PIDS":{"LIMIT":1000000}}}}"#
        #expect(try confine(kelvin, 64) == #"{"process":{"noNewPrivileges":true},"Linux":{"Resources":{"PIDS":{"LIMIT":64}}}}"#)
        // Every "process" object is confined, so whichever Go keeps has it.
        #expect(try confine(#"{"process":{},"process":{"cwd":"/"},\#(pids)}"#)
            == #"{"process":{"noNewPrivileges":true},"process":{"noNewPrivileges":true,"cwd":"/"},\#(pids)}"#)
    }

    @Test("a document that is not plain JSON is refused, so the container does not start", arguments: [
        "", "[]", "{", #"{"process":{}"#, #"{"process":{}} x"#, #"{"process":[]}"#, #"{"process":{},"linux":5}"#,
        #"{"process":{"a":tru}}"#, "{\"process\":{\"a\":\"\u{01}\"}}", #"{"process":{"a":"\q"}}"#, #"{"process":{"a" 1}}"#,
    ])
    func refused(_ text: String) {
        #expect(throws: OCIRuntimeConfig.Invalid.self) { try OCIRuntimeConfig.confine(Array(text.utf8), pidsLimit: 64) }
    }

    @Test("conmon's and buildah's calls: the subcommand, the bundle, runc's log")
    func invocations() throws {
        let conmon = try OCIRuntimeInvocation.parse([
            "--log-format=json", "--log", "/run/c/oci-log", "create", "--bundle", "/s/userdata", "--pid-file", "/run/c/pidfile", "abc",
        ])
        #expect(conmon == OCIRuntimeInvocation(command: "create", bundle: "/s/userdata", log: "/run/c/oci-log", jsonLog: true))
        #expect(conmon.startsContainer)
        let buildah = try OCIRuntimeInvocation.parse(["create", "--bundle", "/var/tmp/buildah1", "--pid-file", "/var/tmp/buildah1/pid", "buildah-buildah1"])
        #expect(buildah.bundle == "/var/tmp/buildah1" && buildah.log == nil && !buildah.jsonLog)
        #expect(try OCIRuntimeInvocation.parse(["--root", "/run/runc", "run", "-b=/b", "id"]) == OCIRuntimeInvocation(command: "run", bundle: "/b"))
        #expect(try OCIRuntimeInvocation.parse(["-systemd-cgroup", "create", "-bundle=/b", "id"]).bundle == "/b")
        // Options after the id count (runc's CLI moves them to the front); the last one wins.
        #expect(try OCIRuntimeInvocation.parse(["create", "-b", "/a", "id", "--bundle", "/b"]).bundle == "/b")
        #expect(try OCIRuntimeInvocation.parse(["create", "--pid-file", "--bundle", "id"]).bundle == nil)
        #expect(try OCIRuntimeInvocation.parse(["restore", "--image-path", "/cp", "--bundle", "/r", "id"]) == OCIRuntimeInvocation(command: "restore", bundle: "/r"))
        // No bundle: the current folder, as for runc.
        #expect(try OCIRuntimeInvocation.parse(["create", "id"]) == OCIRuntimeInvocation(command: "create"))
        for other in [["start", "id"], ["state", "id"], ["delete", "--force", "id"], ["kill", "id", "9"], ["exec", "--process", "/p.json", "id"]] {
            let call = try OCIRuntimeInvocation.parse(["--log-format=json", "--log", "/l"] + other)
            #expect(call.command == other[0] && !call.startsContainer)
        }
        #expect(try OCIRuntimeInvocation.parse(["--version"]) == OCIRuntimeInvocation())
        // An option this reader does not know could hide the subcommand: refused.
        #expect(throws: FarmError.self) { try OCIRuntimeInvocation.parse(["--new-option", "value", "create", "id"]) }
    }

    @Test("the script sends container starts through kiln and the rest straight to the runtime, paths quoted")
    func script() throws {
        let dir = try TempDir("oci-script")
        // Stand-ins that say how they were called.
        let kiln = dir.path("it's kiln")
        let runc = dir.path("runc real")
        try "#!/bin/sh\necho \"kiln $*\"\n".write(to: kiln, atomically: true, encoding: .utf8)
        try "#!/bin/sh\necho \"runc $*\"\n".write(to: runc, atomically: true, encoding: .utf8)
        for file in [kiln, runc] { try FileManager.default.setAttributes([.posixPermissions: 0o755], ofItemAtPath: file.path) }
        let script = try OCIRuntimeWrapper.install(in: dir.path("rt"), kiln: kiln.path, runtime: runc.path, pidsLimit: 77)
        #expect(script.lastPathComponent == "runc")
        #expect(try FileManager.default.attributesOfItem(atPath: script.path)[.posixPermissions] as? Int == 0o755)
        func call(_ arguments: [String]) throws -> String {
            let r = try Spawn.run(script.path, arguments)
            return String(decoding: r.output, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        }
        #expect(try call(["--log", "/l", "create", "--bundle", "/b c", "id"])
            == "kiln oci-runtime --runtime \(runc.path) --pids-limit 77 -- --log /l create --bundle /b c id")
        #expect(try call(["run", "id"]).hasPrefix("kiln oci-runtime"))
        #expect(try call(["restore", "id"]).hasPrefix("kiln oci-runtime"))
        #expect(try call(["start", "id"]) == "runc start id")
        #expect(try call(["--version"]) == "runc --version")
    }
}
