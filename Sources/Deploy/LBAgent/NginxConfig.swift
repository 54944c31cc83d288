import Foundation
import KilnCore

/// The nginx configuration of one lb-agent, as text: the main file and one file per domain.
/// Pure: no file or process is touched here, so every rule is testable on its own.
///
/// Nothing read from etcd reaches a file before `domainFile(domain:value:)` has checked it: the
/// domain and the server addresses against `Validation`, the settings against
/// `SLBDomain.allowedSettings` and a character set that cannot end a directive, open a block,
/// start a comment or name a variable. Values nginx itself refuses (`client_max_body_size ten`)
/// are left to `nginx -t`.
///
/// With `lua` set (the Lua module is loaded), a domain whose servers are all IPv4 addresses
/// gets an upstream that picks among servers held in a shared dict (`balancer_by_lua_block`),
/// so the agent can change them without a reload; the file carries them too (with the etcd
/// revision they are from), so a fresh nginx or a reload serves them at once.
struct NginxConfig: Sendable {
    var group: String
    /// `host:port` nginx listens on.
    var listen: String
    /// The folder that holds everything nginx writes (pid, logs, temp files).
    var directory: URL
    /// The Lua module and the agent's control endpoint, when servers change without a reload.
    var lua: NginxLua?

    init(group: String, listen: String, directory: URL, lua: NginxLua? = nil) {
        self.group = group
        self.listen = listen
        self.directory = directory
        self.lua = lua
    }

    /// How often a failing server may fail before nginx leaves it out for `failTimeout`.
    static let maxFails = 2
    static let failTimeout = "5s"
    /// Defaults for a domain's `server` block; a domain's own setting of the same name wins.
    static let defaults: [(String, String)] = [
        ("proxy_connect_timeout", "2s"),
        ("proxy_next_upstream_tries", "3"),
    ]

    /// The main file: process settings, the catch-all server and the `include` of the domain
    /// files in `domainsFolder` (the live folder, or a staging one under test).
    func mainFile(domainsFolder: URL) -> String {
        let d = directory.path
        let modules = lua.map { lua in lua.modules.map { "load_module \($0.path);\n" }.joined() } ?? ""
        return """
        # Written by `kiln lb-agent --group \(group)`: rewritten at every start, do not edit.
        \(modules)daemon off;
        worker_processes auto;
        pid \(d)/nginx.pid;
        error_log \(d)/logs/error.log warn;
        # A reload lets old workers finish their requests, for at most this long.
        worker_shutdown_timeout 60s;

        events {
            worker_connections 4096;
        }

        http {
            access_log off;
            server_tokens off;
            client_body_temp_path \(d)/temp/client_body;
            proxy_temp_path \(d)/temp/proxy;
            fastcgi_temp_path \(d)/temp/fastcgi;
            uwsgi_temp_path \(d)/temp/uwsgi;
            scgi_temp_path \(d)/temp/scgi;
            # Domains may be 253 characters long, and a group may hold thousands.
            server_names_hash_bucket_size 256;
            server_names_hash_max_size 16384;

            # A Host that names no domain of the group.
            server {
                listen \(listen) default_server;
                server_name _;
                default_type text/plain;
                location / {
                    return 404 "kiln lb-agent (group \(group)): no domain named $host is served here\\n";
                }
            }

        \(lua.map(luaBlock) ?? "")
            include \(domainsFolder.path)/*.conf;
        }

        """
    }

    /// The shared dict, the Lua code and the agent's control endpoint (see `NginxLua`).
    private func luaBlock(_ lua: NginxLua) -> String {
        """
            # Upstream servers the lb-agent changes without a reload (see kiln_lb.lua).
            lua_shared_dict \(NginxLua.dict) \(NginxLua.dictSize);
            init_by_lua_file \(lua.script.path);
            # Only the agent reaches this: the socket's folder is the agent user's alone.
            server {
                listen unix:\(lua.controlSocket.path);
                client_max_body_size 1m;
                client_body_buffer_size 1m;
                location /servers/ {
                    content_by_lua_block { require("kiln_lb").control() }
                }
            }

        """
    }

    /// The name of a domain's file in the domains folder.
    static func fileName(_ domain: String) -> String { "\(domain).conf" }

    /// Checks one etcd key and value of `/slb/{group}/domains/` and renders the domain's file,
    /// or says why it is refused. `domain` is the key's last part; `revision` the key's
    /// mod revision, which orders the servers of the file against those the agent sets later.
    func domainFile(domain: String, value: [UInt8], revision: Int64 = 0) -> Result<String, KilnError> {
        do {
            try Validation.domain(domain)
            let d: SLBDomain
            do {
                d = try KilnJSON.decode(SLBDomain.self, from: value)
            } catch {
                throw KilnError.invalid("the value is not an SLBDomain in JSON (\(Self.reason(error))); write {\"domain\":\"\(domain)\",\"servers\":[{\"address\":\"127.0.0.1:20001\"}]}")
            }
            guard d.domain == domain else {
                throw KilnError.invalid("the value names domain '\(Validation.printable(d.domain))' but its key names '\(domain)'; they must be the same")
            }
            for s in d.servers {
                try Validation.serverAddress(s.address)
                if let w = s.weight, !(1...1000).contains(w) {
                    throw KilnError.invalid("server \(s.address) has weight \(w); use 1 to 1000")
                }
            }
            let settings = d.settings ?? [:]
            for (name, value) in settings {
                guard SLBDomain.allowedSettings.contains(name) else {
                    throw KilnError.invalid("setting '\(Validation.printable(name))' is not allowed; use one of \(SLBDomain.allowedSettings.sorted().joined(separator: ", "))")
                }
                guard !value.isEmpty, value.utf8.count <= 64, value.utf8.allSatisfy(Self.isSettingByte) else {
                    throw KilnError.invalid("setting \(name) '\(Validation.printable(value))' is refused: use one word of letters, digits, '.', '-' and '_' (such as 10m or 30s)")
                }
            }
            return .success(render(d, settings: settings, revision: revision))
        } catch let e as KilnError {
            return .failure(e)
        } catch {
            return .failure(KilnError.invalid("\(error)"))
        }
    }

    /// The file of a domain that passed `domainFile`'s checks.
    private func render(_ d: SLBDomain, settings: [String: String], revision: Int64) -> String {
        var merged = settings
        for (name, value) in Self.defaults where merged[name] == nil { merged[name] = value }
        let directives = merged.sorted { $0.key < $1.key }.map { "    \($0.key) \($0.value);" }.joined(separator: "\n")
        let upstream = "slb_\(d.domain)"
        var text = "# \(d.domain) of lb group \(group): written by kiln lb-agent from etcd.\n"
        if d.servers.isEmpty {
            text += """
            server {
                listen \(listen);
                server_name \(d.domain);
            \(directives)
                default_type text/plain;
                location / {
                    return 503 "\(d.domain) has no upstream servers in lb group \(group)\\n";
                }
            }

            """
            return text
        }
        let servers: String
        if lua != nil, let seed = NginxLua.servers(d.servers, revision: revision) {
            // nginx wants one server in an upstream; the balancer sets the real one.
            servers = """
                server 0.0.0.1:1;
                balancer_by_lua_block { require("kiln_lb").balance("\(d.domain)", "\(seed)") }
            """
        } else {
            servers = d.servers.map { s in
                "    server \(s.address)\(s.weight.map { " weight=\($0)" } ?? "") max_fails=\(Self.maxFails) fail_timeout=\(Self.failTimeout);"
            }.joined(separator: "\n")
        }
        text += """
        upstream \(upstream) {
        \(servers)
        }

        server {
            listen \(listen);
            server_name \(d.domain);
        \(directives)
            # A server that refuses, times out or answers 502/503 passes the request on to the next.
            proxy_next_upstream error timeout http_502 http_503;
            proxy_next_upstream_timeout 15s;
            location / {
                proxy_pass http://\(upstream);
                proxy_set_header Host $host;
                proxy_set_header X-Real-IP $remote_addr;
                proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
                proxy_set_header X-Forwarded-Proto $scheme;
            }
        }

        """
        return text
    }

    /// Letters, digits, '.', '-' and '_': nothing that ends a directive (`;`), opens or
    /// closes a block, quotes, starts a comment, escapes, names a variable or splits words.
    private static func isSettingByte(_ b: UInt8) -> Bool {
        (48...57).contains(b) || (65...90).contains(b) || (97...122).contains(b) || b == 46 || b == 45 || b == 95
    }

    /// A decoding error in one line.
    private static func reason(_ error: any Error) -> String {
        switch error {
        case DecodingError.dataCorrupted(let c): return c.debugDescription
        case DecodingError.keyNotFound(let k, _): return "no '\(k.stringValue)'"
        case DecodingError.typeMismatch(_, let c), DecodingError.valueNotFound(_, let c):
            return "\(c.codingPath.map(\.stringValue).joined(separator: ".")): \(c.debugDescription)"
        default: return "\(error)"
        }
    }
}
