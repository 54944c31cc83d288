import AsyncHTTPClient
import Foundation
import KilnCore
import NIOCore
import Processes

/// What lets an lb-agent change a domain's upstream servers without reloading nginx: the Lua
/// module (Debian's `libnginx-mod-http-lua`, loaded after the `ndk` module it needs), a
/// `lua_shared_dict` that holds each domain's servers, a `balancer_by_lua_block` in each
/// domain's upstream that picks among them, and a control endpoint on a unix socket through
/// which the agent sets them.
///
/// A reload makes the old workers close their idle keep-alive client connections, and a
/// client that reuses one at that instant sees "connection closed"; setting the dict does not
/// touch a connection. The dict is shared by all workers (one call changes them all) and
/// outlives a reload, so each value carries the etcd revision it is from: the balancer takes
/// the dict's servers when they are at least as new as those written in the domain's file,
/// else the file's. An old worker finishing its requests after a reload therefore keeps the
/// newest servers, and a new one the file's (which are then as new).
struct NginxLua: Sendable {
    /// `load_module` files, in order (ndk, then lua).
    var modules: [URL]
    /// The Lua code (`kiln_lb`), written by the agent at every start.
    var script: URL
    /// The control endpoint's socket, in a folder only the agent's user may enter.
    var controlSocket: URL

    static let dict = "kiln_servers"
    /// Room for the servers of tens of thousands of domains. `safe_set` never evicts: a full
    /// dict fails the update, and the agent reloads instead.
    static let dictSize = "16m"

    /// The domain's servers as the balancer reads them, `REVISION ADDRESS=WEIGHT …`, or nil if
    /// one is not an IPv4 address (the balancer takes only addresses; nginx resolves names
    /// when it loads the file, so such a domain keeps a plain upstream and reloads).
    static func servers(_ servers: [SLBServer], revision: Int64) -> String? {
        guard !servers.isEmpty else { return nil }
        var words = ["\(revision)"]
        for s in servers {
            guard let colon = s.address.lastIndex(of: ":"), isIPv4(s.address[..<colon]) else { return nil }
            words.append("\(s.address)=\(s.weight ?? 1)")
        }
        return words.joined(separator: " ")
    }

    private static func isIPv4(_ host: Substring) -> Bool {
        let parts = host.split(separator: ".", omittingEmptySubsequences: false)
        return parts.count == 4 && parts.allSatisfy { p in
            !p.isEmpty && p.count <= 3 && p.utf8.allSatisfy { (48...57).contains($0) } && Int(p)! <= 255
        }
    }

    /// Splits a rendered domain file into the servers of its balancer and the rest (what must
    /// be the same for a change to need no reload); nil for a file without a Lua balancer.
    static func split(_ file: String) -> (shape: String, servers: String)? {
        guard let call = file.range(of: "require(\"kiln_lb\").balance(\""),
              let open = file.range(of: "\", \"", range: call.upperBound..<file.endIndex),
              let close = file.range(of: "\")", range: open.upperBound..<file.endIndex) else { return nil }
        return (String(file[..<open.upperBound] + file[close.lowerBound...]), String(file[open.upperBound..<close.lowerBound]))
    }

    /// The Lua module's files in `modulesDirectory` (or the folder `nginx -V` names): nil and
    /// why when the module is not there.
    static func find(nginxPath: String, modulesDirectory: URL?, directory: URL) async -> (NginxLua?, String) {
        var folder = modulesDirectory
        if folder == nil, let r = try? await Spawn.runDetached(nginxPath, ["-V"]),
           let option = String(decoding: r.output, as: UTF8.self).split(separator: " ").first(where: { $0.hasPrefix("--modules-path=") }) {
            folder = URL(fileURLWithPath: String(option.dropFirst("--modules-path=".count)).trimmingCharacters(in: .whitespacesAndNewlines))
        }
        let modules = folder ?? URL(fileURLWithPath: "/usr/lib/nginx/modules")
        let lua = modules.appendingPathComponent("ngx_http_lua_module.so"), ndk = modules.appendingPathComponent("ndk_http_module.so")
        let fm = FileManager.default
        guard fm.fileExists(atPath: lua.path) else {
            return (nil, "the Lua module is not installed (no \(lua.path)): apt-get install libnginx-mod-http-lua")
        }
        let socket = directory.appendingPathComponent("control/nginx.sock")
        // sockaddr_un holds 108 bytes with the final NUL.
        guard socket.path.utf8.count < 108 else {
            return (nil, "the control socket's path \(socket.path) is longer than a unix socket allows: give a shorter --dir")
        }
        // Debian's Lua module needs the ndk module loaded before it.
        let loaded = (fm.fileExists(atPath: ndk.path) ? [ndk] : []) + [lua]
        return (NginxLua(modules: loaded, script: directory.appendingPathComponent("lua/kiln_lb.lua"), controlSocket: socket), "")
    }

    /// The Lua code of the balancer and the control endpoint, loaded by `init_by_lua_file`.
    static let source = #"""
    -- Written by kiln lb-agent: rewritten at every start, do not edit.
    -- Each domain's servers are "REVISION ADDRESS=WEIGHT ...": in its file (the seed) and, once
    -- the agent changed them without a reload, in the shared dict. The newer one wins.
    local balancer = require "ngx.balancer"
    local servers = ngx.shared.kiln_servers

    local M = {}
    local cache = {}     -- domain -> {text = ..., peers = ...}, this worker's
    local failures = {}  -- "address:port" -> {count = ..., at = ...}, this worker's (nginx's max_fails)
    local failure_count = 0  -- entries in failures
    local max_fails, fail_timeout = 2, 5

    local function revision(text)
        return tonumber(text:match("^(%d+) ")) or -1
    end

    -- The servers of a text, or nil and why.
    local function parse(text)
        local rev = text:match("^(%d+) ")
        if not rev then return nil, "no revision" end
        local peers = {}
        for word in text:sub(#rev + 2):gmatch("%S+") do
            local a, b, c, d, port, weight = word:match("^(%d+)%.(%d+)%.(%d+)%.(%d+):(%d+)=(%d+)$")
            if not a then return nil, "bad server '" .. word .. "'" end
            for _, n in ipairs({a, b, c, d}) do
                if tonumber(n) > 255 then return nil, "bad address '" .. word .. "'" end
            end
            port, weight = tonumber(port), tonumber(weight)
            if port < 1 or port > 65535 or weight < 1 or weight > 1000 then
                return nil, "bad port or weight '" .. word .. "'"
            end
            peers[#peers + 1] = {host = a .. "." .. b .. "." .. c .. "." .. d, port = port, weight = weight,
                                 key = word:match("^[^=]+"), current = 0}
        end
        if #peers == 0 then return nil, "no servers" end
        return peers
    end

    local function down(peer, now)
        local f = failures[peer.key]
        if not f then return false end
        if now - f.at >= fail_timeout then
            failures[peer.key] = nil
            return false
        end
        return f.count >= max_fails
    end

    -- nginx's smooth weighted round robin over the servers this request has not tried, leaving
    -- out those that failed max_fails times within fail_timeout (unless that leaves none).
    local function pick(peers, tried)
        local now = ngx.now()
        for pass = 1, 2 do
            local best, total = nil, 0
            for _, p in ipairs(peers) do
                if not tried[p.key] and (pass == 2 or not down(p, now)) then
                    p.current = p.current + p.weight
                    total = total + p.weight
                    if not best or p.current > best.current then best = p end
                end
            end
            if best then
                best.current = best.current - total
                return best
            end
        end
        return nil
    end

    -- balancer_by_lua of a domain's upstream; seed: the servers written in its file.
    function M.balance(domain, seed)
        local text = seed
        local stored = servers:get(domain)
        if stored and revision(stored) >= revision(seed) then text = stored end
        local entry = cache[domain]
        if not entry or entry.text ~= text then
            local peers, err = parse(text)
            if not peers then
                ngx.log(ngx.ERR, "kiln_lb: the servers of ", domain, " are unreadable: ", err)
                return ngx.exit(502)
            end
            entry = {text = text, peers = peers}
            cache[domain] = entry
        end
        local ctx = ngx.ctx
        local tried = ctx.kiln_tried
        if not tried then
            tried = {}
            ctx.kiln_tried = tried
            -- Like nginx's own upstream: each server once, within proxy_next_upstream_tries.
            if #entry.peers > 1 then balancer.set_more_tries(#entry.peers - 1) end
        elseif ctx.kiln_last and balancer.get_last_failure() == "failed" then
            local now = ngx.now()
            local f = failures[ctx.kiln_last]
            if f then
                f.count, f.at = f.count + 1, now
            else
                -- Servers come and go without a reload: forget old failures now and then.
                failure_count = failure_count + 1
                if failure_count > 1000 then
                    failure_count = 0
                    for key, old in pairs(failures) do
                        if now - old.at >= fail_timeout then failures[key] = nil else failure_count = failure_count + 1 end
                    end
                end
                failures[ctx.kiln_last] = {count = 1, at = now}
            end
        end
        local peer = pick(entry.peers, tried) or entry.peers[1]
        tried[peer.key] = true
        ctx.kiln_last = peer.key
        local ok, err = balancer.set_current_peer(peer.host, peer.port)
        if not ok then
            ngx.log(ngx.ERR, "kiln_lb: cannot send ", domain, " to ", peer.key, ": ", err)
            return ngx.exit(502)
        end
    end

    -- The agent's endpoint: PUT (body: the servers), GET or DELETE /servers/DOMAIN.
    function M.control()
        local domain = ngx.var.uri:match("^/servers/([%w%.%-_]+)$")
        if not domain then return ngx.exit(404) end
        local method = ngx.req.get_method()
        if method == "PUT" then
            ngx.req.read_body()
            local body = ngx.req.get_body_data() or ""
            local peers, err = parse(body)
            if not peers then
                ngx.status = 400
                ngx.say("refused: ", err)
                return ngx.exit(400)
            end
            local ok, err = servers:safe_set(domain, body)
            if not ok then
                ngx.status = 507
                ngx.say("cannot store the servers: ", err)
                return ngx.exit(507)
            end
        elseif method == "DELETE" then
            servers:delete(domain)
            return ngx.exit(204)
        elseif method ~= "GET" then
            return ngx.exit(405)
        end
        local text = servers:get(domain)
        if not text then return ngx.exit(404) end
        ngx.print(text)
    end

    package.loaded.kiln_lb = M

    """#
}

/// The agent's side of the control endpoint: sets a domain's servers in the shared dict and
/// reads them back. Each call takes a new connection: an old worker closes a kept-alive one
/// when nginx reloads.
struct ServerControl: Sendable {
    let socket: URL
    let http: HTTPClient

    init(socket: URL, http: HTTPClient = .shared) {
        self.socket = socket
        self.http = http
    }

    /// Sets `servers` (`NginxLua.servers`) as the domain's, then reads them back; throws
    /// unless nginx holds exactly them.
    func set(_ domain: String, servers: String) async throws {
        let (status, body) = try await call(.put, domain, body: servers)
        guard status == 200 else { throw KilnError.unavailable("setting the servers of \(domain) through \(socket.path) answered \(status): \(body)") }
        let (readStatus, read) = try await call(.get, domain)
        guard readStatus == 200, read == servers else {
            throw KilnError.unavailable("the servers of \(domain) read back through \(socket.path) are '\(read)' (status \(readStatus)), not '\(servers)'")
        }
    }

    /// Forgets the domain's servers (it is no longer served).
    func remove(_ domain: String) async throws {
        let (status, body) = try await call(.delete, domain)
        guard status == 204 || status == 200 else { throw KilnError.unavailable("removing the servers of \(domain) answered \(status): \(body)") }
    }

    private enum Verb { case get, put, delete }

    private func call(_ verb: Verb, _ domain: String, body: String? = nil) async throws -> (Int, String) {
        guard let url = URL(httpURLWithSocketPath: socket.path, uri: "/servers/\(domain)") else {
            throw KilnError.invalid("no URL for the control socket \(socket.path)")
        }
        var request = HTTPClientRequest(url: url.absoluteString)
        switch verb {
        case .get: request.method = .GET
        case .put: request.method = .PUT
        case .delete: request.method = .DELETE
        }
        // The URL's host is the socket's path, which nginx refuses as a Host header.
        request.headers.add(name: "Host", value: "localhost")
        request.headers.add(name: "Connection", value: "close")
        if let body { request.body = .bytes(ByteBuffer(string: body)) }
        let response = try await http.execute(request, timeout: .seconds(5))
        return (Int(response.status.code), String(buffer: try await response.body.collect(upTo: 1 << 20)))
    }
}
