import BuildAgent
import DockerAPI
import Etcd
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

extension EndToEndTests {
/// Builds written by someone who wants the farm: each tries one way out of its sandbox and
/// must fail, with the farm untouched. Several holes share one farm to keep the suite short.
/// Nested in `EndToEndTests` so that its `.serialized` keeps it from running beside the other
/// farms (they share the podman storage).
@Suite("Hostile builds")
struct HostileBuildTests {
    static let busybox = "localhost/kiln/busybox:1"

    /// The repository every hostile project builds from: a probe that tries to write into etcd
    /// (and to reach the scheduler and the registry) on every local address, run by the compile
    /// step and again by the Dockerfile's RUN.
    @discardableResult
    static func publishHostileRepository(_ farm: Farm, branch: String = "main") throws -> String {
        let etcdPort = URL(string: farm.infra.etcd.endpoint)!.port!
        let apiPort = URL(string: farm.api)!.port!
        // This machine's own addresses, read here on the host side (only ever these and loopback).
        let own = LocalPeers.hostAddresses().map { "\($0 >> 24).\(($0 >> 16) & 255).\(($0 >> 8) & 255).\($0 & 255)" }
        let probe = #"""
            #!/bin/sh
            # Tries to write /hostile/<stage>/<address> into etcd, and to reach the scheduler and
            # the registry, on loopback, host.containers.internal and every address of the host.
            stage="$1"; dir="$(dirname "$0")"
            hci=$(awk '/host.containers.internal/ {print $1; exit}' /etc/hosts)
            for a in 127.0.0.1 $hci $(cat "$dir/host-addresses"); do
              key=$(printf '/hostile/%s/%s' "$stage" "$a" | base64)
              body='{"key":"'"$key"'","value":"cHduZWQ="}'
              if printf 'POST /v3/kv/put HTTP/1.0\r\nContent-Type: application/json\r\nContent-Length: %s\r\n\r\n%s' ${#body} "$body" \
                  | nc -w 3 "$a" "$(cat "$dir/etcd-port")" 2>/dev/null | grep -q HTTP; then
                echo "PROBE $stage $a etcd REACHED"
              else
                echo "PROBE $stage $a etcd refused"
              fi
              for port in $(cat "$dir/other-ports"); do
                if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 "$a" "$port" 2>/dev/null | grep -q HTTP; then echo "PROBE $stage $a:$port REACHED"; fi
              done
            done
            # The control: the Maven mirror is meant to be reachable from builds.
            if printf 'GET / HTTP/1.0\r\n\r\n' | nc -w 3 "$hci" "$(cat "$dir/mirror-port")" | grep -q HTTP; then echo "PROBE $stage mirror answered"; fi
            exit 0

            """#
        let dockerfile = """
            FROM \(busybox)
            COPY probe /probe
            RUN sh /probe/probe.sh image
            """
        let files: [String: String] = [
            "probe/probe.sh": probe, "probe/etcd-port": "\(etcdPort)\n", "probe/mirror-port": "\(farm.infra.mavenMirror.port)\n",
            "probe/other-ports": "\(apiPort) \(farm.infra.registry.port)\n", "probe/host-addresses": own.joined(separator: " ") + "\n",
            "Dockerfile": dockerfile,
            "bomb.Dockerfile": "FROM \(busybox)\nRUN i=0; while [ $i -lt 3000 ]; do sleep 60 & i=$((i+1)); done; echo ALL-'FORKED'\n",
            "mount.Dockerfile": "FROM \(busybox)\nRUN --mount=type=cache,id=../../../../..,target=/host ls /host\n",
            // RUN steps go through the engine's runtime wrapper (kiln oci-runtime): the step
            // fails unless it has no-new-privileges, and a setuid-root binary made in one step
            // gives a user nothing in the next.
            "nnp.Dockerfile": "FROM \(busybox)\nRUN grep -qx \"$(printf 'NoNewPrivs:\\t1')\" /proc/self/status && echo NNP-'ON'\n",
            "setuid.Dockerfile": """
                FROM \(busybox)
                COPY setuid-helper /setuid-helper
                RUN chown 0:0 /setuid-helper && chmod 4755 /setuid-helper && ls -ln /setuid-helper
                USER 1000:1000
                RUN /setuid-helper; id -u

                """,
            "crlf.Dockerfile": "# CRLF line ends\r\nFROM \(busybox)\r\nRUN --mount=type=cache,id=../../../../..,target=/host ls /host\r\n",
            // Base images whose ONBUILD triggers run first (made by onbuildTriggers()).
            "onbuild-hostile.Dockerfile": "FROM \(farm.infra.registry.address)/onbuild:hostile\nRUN echo main-'ran'\n",
            "onbuild-copy.Dockerfile": "FROM \(farm.infra.registry.address)/onbuild:copyfrom\nRUN echo main-'ran'\n",
            "onbuild-public.Dockerfile": "FROM docker.io/hostile/onbuild:1\nRUN echo main-'ran'\n",
            "onbuild-ok.Dockerfile": "FROM \(farm.infra.registry.address)/onbuild:ok AS first\nRUN echo main-'ran'\nFROM first\n",
        ]
        return try DemoRepository.publish(source: DemoRepository.locateFixtures()!.appendingPathComponent("demo"),
                                          bareRepository: farm.infra.gitRoot.appendingPathComponent("hostile.git"), branch: branch) { dir in
            try branch.write(to: dir.appendingPathComponent("branch"), atomically: true, encoding: .utf8)
            for (path, text) in files {
                let url = dir.appendingPathComponent(path)
                try FileManager.default.createDirectory(at: url.deletingLastPathComponent(), withIntermediateDirectories: true)
                try text.write(to: url, atomically: true, encoding: .utf8)
            }
            try SetuidHelper.compile(to: dir.appendingPathComponent("setuid-helper"))
        }
    }

    func addProject(_ farm: Farm, _ name: String, repository: String? = nil, command: String, context: String = ".", dockerfile: String = "Dockerfile") async throws {
        let p = Project(name: name, repository: repository ?? farm.infra.repositoryURL("hostile"), buildImage: HostileBuildTests.busybox,
                        buildCommand: command, dockerfile: dockerfile, context: context)
        let r = try await farm.request(.POST, "/api/v1/projects", body: try KilnJSON.encode(p))
        #expect(r.status == 201 || r.status == 200, "\(r.body)")
    }

    func build(_ farm: Farm, _ project: String, _ request: BuildRequest = BuildRequest(ref: "main")) async throws -> (Build, String) {
        let b = try await farm.finished(try await farm.startBuild(project, request).id, timeout: .seconds(180))
        return (b, try await farm.log(b.id))
    }

    /// The status of the repository's tag list, asked as admin (the registry takes tokens only).
    func tags(_ farm: Farm, _ repository: String) async throws -> Int {
        let token = try await farm.token(farm.admin, scopes: ["repository:\(repository):pull"])
        return try await httpRequest(.GET, "\(farm.infra.registry.url)/v2/\(repository)/tags/list", headers: [("Authorization", "Bearer \(token)")]).status
    }

    /// The repository's tags, asked as admin.
    func tags(_ farm: Farm, _ repository: String, list: Bool) async throws -> [String] {
        let token = try await farm.token(farm.admin, scopes: ["repository:\(repository):pull"])
        let reply = try await httpRequest(.GET, "\(farm.infra.registry.url)/v2/\(repository)/tags/list", headers: [("Authorization", "Bearer \(token)")])
        struct Tags: Decodable { let tags: [String]? }
        return (try? JSONDecoder().decode(Tags.self, from: Data(reply.body.utf8)))?.tags ?? []
    }

    @Test("builds reach neither etcd nor the scheduler nor the registry, from the compile step or a RUN; paths through links, file:// mirrors and fork or memory bombs fail; RUN steps have no-new-privileges; a feature branch cannot plant into the main cache")
    func hostileBuilds() async throws {
        try await withFarm(configure: { farm, id in
            var c = farm.agentConfiguration(id, timeouts: StepTimeouts(fetch: .seconds(60), compile: .seconds(120), image: .seconds(120), push: .seconds(60)))
            c.limits = BuildLimits(memoryBytes: 256 << 20, cpus: 1, pids: 256)
            // Allowed: the whole farm folder, which holds the git server's repositories and
            // the agent's data folder; the latter must stay refused.
            c.allowFileRepos = [farm.dataDir]
            return c
        }) { farm in
            try farm.infra.podman.ensureBusyboxImage(HostileBuildTests.busybox)
            try HostileBuildTests.publishHostileRepository(farm)

            // 1. The network: etcd, the scheduler and the registry on every local address.
            try await addProject(farm, "net", command: "sh probe/probe.sh compile")
            let (net, netLog) = try await build(farm, "net")
            #expect(net.status == .succeeded, "\(net.error ?? "") \(netLog)")
            let probes = netLog.split(separator: "\n").filter { $0.hasPrefix("PROBE ") }
            #expect(!probes.contains { $0.contains("REACHED") }, "\(probes)")
            for stage in ["compile", "image"] {
                // The probe ran in both steps, on loopback and on the bridge's host address...
                #expect(probes.contains("PROBE \(stage) 127.0.0.1 etcd refused"), "\(stage): \(probes)")
                #expect(probes.filter { $0.hasPrefix("PROBE \(stage) ") && $0.hasSuffix("etcd refused") }.count >= 3, "\(stage): \(probes)")
                // ...and the network itself worked: the mirror builds are meant to use answered.
                #expect(probes.contains("PROBE \(stage) mirror answered"), "\(stage): \(probes)")
            }
            #expect(netLog.contains("sandbox: network bridge"))
            #expect(try await farm.etcd.range(prefix: "/hostile/").kvs.isEmpty)

            // 2. A context through a link out of the checkout (into the agent's git mirrors).
            let agentData = farm.dataDir.appendingPathComponent("agents/agent-1")
            try await addProject(farm, "linkctx", command: "ln -s \(agentData.path)/mirrors /workspace/c", context: "c", dockerfile: "c/Dockerfile")
            let (linkctx, linkctxLog) = try await build(farm, "linkctx")
            #expect(linkctx.status == .failed)
            #expect(linkctx.steps.first { $0.name == .image }?.status == .failed)
            #expect(linkctx.error?.contains("leads out of the checkout") == true, "\(linkctx.error ?? "") \(linkctxLog)")
            #expect(try await tags(farm, "linkctx") == 404, "something was pushed for linkctx")

            // 3. A Dockerfile that is a link out of the checkout.
            try await addProject(farm, "linkdf", command: "rm Dockerfile && ln -s \(agentData.path)/maven-settings.xml Dockerfile")
            let (linkdf, _) = try await build(farm, "linkdf")
            #expect(linkdf.status == .failed)
            #expect(linkdf.error?.contains("Dockerfile 'Dockerfile' leads out of the checkout") == true, "\(linkdf.error ?? "")")
            #expect(try await tags(farm, "linkdf") == 404)

            // 4. Another project's mirror on the agent through file://: refused even though the
            // farm folder holding it is allowed; a repository in the allowed folder works.
            let otherMirror = agentData.appendingPathComponent("mirrors/net.git")
            #expect(FileManager.default.fileExists(atPath: otherMirror.path))
            try await addProject(farm, "filerepo", repository: "file://" + otherMirror.path, command: "true")
            let (filerepo, _) = try await build(farm, "filerepo")
            #expect(filerepo.status == .failed)
            #expect(filerepo.steps.first?.status == .failed)
            #expect(filerepo.error?.contains("agent's own data folder") == true, "\(filerepo.error ?? "")")
            try await addProject(farm, "allowed", repository: "file://" + farm.infra.gitRoot.appendingPathComponent("hostile.git").path, command: "true")
            let (allowed, allowedLog) = try await build(farm, "allowed")
            #expect(allowed.steps.first?.status == .succeeded, "\(allowed.error ?? "") \(allowedLog)")

            // 5. A fork bomb: stopped by the agent's pids limit (256), the agent goes on.
            try await addProject(farm, "forkbomb", command: "i=0; while [ $i -lt 3000 ]; do sleep 60 & i=$((i+1)); done; echo ALL-'FORKED'")
            let (bomb, bombLog) = try await build(farm, "forkbomb")
            #expect(bomb.status == .failed, "\(bombLog)")
            #expect(!bombLog.contains("ALL-FORKED"))
            #expect(bombLog.contains("can't fork"), "\(bombLog)")

            // ...and in a RUN of the Dockerfile (bounded through the agent's cgroup).
            try await addProject(farm, "runbomb", command: "true", dockerfile: "bomb.Dockerfile")
            let (runbomb, runbombLog) = try await build(farm, "runbomb")
            #expect(runbomb.status == .failed, "\(runbombLog)")
            #expect(runbomb.steps.first { $0.name == .image }?.status == .failed)
            #expect(!runbombLog.contains("ALL-FORKED"))
            #expect(runbombLog.contains("can't fork"), "\(runbombLog)")
            #expect(try await tags(farm, "runbomb") == 404)

            // RUN steps have no-new-privileges: the step that checks passes; a setuid-root
            // binary run by a user stays that user (OCIRuntimeWrapperTests shows it gains root
            // without the wrapper).
            // The podman storage is shared between runs and agents keep their last images for
            // layer reuse: an earlier run's image would answer these RUNs from the cache, and
            // the lines checked below would never be printed.
            let stale = try farm.podman(["images", "--format", "{{.Repository}}:{{.Tag}}"]).split(separator: "\n")
                .map(String.init).filter { $0.contains("/runnnp:") || $0.contains("/runsetuid:") }
            if !stale.isEmpty { _ = try farm.podman(["rmi", "-f"] + stale) }
            try await addProject(farm, "runnnp", command: "true", dockerfile: "nnp.Dockerfile")
            let (runnnp, runnnpLog) = try await build(farm, "runnnp")
            #expect(runnnp.status == .succeeded, "\(runnnp.error ?? "") \(runnnpLog)")
            #expect(runnnpLog.contains("NNP-ON"), "\(runnnpLog)")
            try await addProject(farm, "runsetuid", command: "true", dockerfile: "setuid.Dockerfile")
            let (runsetuid, runsetuidLog) = try await build(farm, "runsetuid")
            #expect(runsetuid.status == .succeeded, "\(runsetuid.error ?? "") \(runsetuidLog)")
            #expect(runsetuidLog.contains("-rwsr-xr-x"), "the helper was not made setuid root: \(runsetuidLog)")
            #expect(runsetuidLog.contains("SETUID-HELPER uid=1000 euid=1000"), "\(runsetuidLog)")
            #expect(!runsetuidLog.contains("GAINED-ROOT"), "\(runsetuidLog)")

            // A RUN that would mount the builder's host: refused before anything is sent.
            try await addProject(farm, "runmount", command: "true", dockerfile: "mount.Dockerfile")
            let (runmount, _) = try await build(farm, "runmount")
            #expect(runmount.status == .failed)
            #expect(runmount.error?.contains("RUN --mount is not allowed") == true, "\(runmount.error ?? "")")

            // ...also with CRLF line ends and a comment first (the check once saw one line).
            try await addProject(farm, "crlf", command: "true", dockerfile: "crlf.Dockerfile")
            let (crlf, _) = try await build(farm, "crlf")
            #expect(crlf.status == .failed)
            #expect(crlf.error?.contains("RUN --mount is not allowed") == true, "\(crlf.error ?? "")")

            // 6. A memory hog: killed at the agent's memory limit (256 MiB; tail keeps 1 GiB).
            try await addProject(farm, "memhog", command: "head -c 1200m /dev/zero | tail -c 1000m > /dev/null; s=$?; [ $s = 0 ] && echo SUR'VIVED'; exit $s")
            let (hog, hogLog) = try await build(farm, "memhog")
            #expect(hog.status == .failed, "\(hogLog)")
            #expect(!hogLog.contains("SURVIVED"))
            #expect(hog.error?.contains("status 137") == true, "\(hog.error ?? "")")

            // 7. Caches: what a feature branch plants, the main build does not find.
            try HostileBuildTests.publishHostileRepository(farm, branch: "feature")
            // (The markers are quoted apart so that the command line the log repeats does not hold them.)
            let plant = "if [ -e /root/.m2/planted ]; then echo FOUND-'PLANTED'; fi; echo evil > /root/.m2/planted"
            try await addProject(farm, "cache", command: plant)
            let (feature, featureLog) = try await build(farm, "cache", BuildRequest(ref: "feature", mvncache: true))
            #expect(feature.status == .succeeded, "\(feature.error ?? "") \(featureLog)")
            #expect(!featureLog.contains("FOUND-PLANTED"))
            let (main, mainLog) = try await build(farm, "cache", BuildRequest(ref: "main", mvncache: true))
            #expect(main.status == .succeeded, "the agent is not healthy after the bombs: \(main.error ?? "") \(mainLog)")
            #expect(!mainLog.contains("FOUND-PLANTED"), "the main build found what the feature branch planted")
            #expect(mainLog.contains("caches: the protected ones"))
            // A pinned commit of another branch, asked for as main: not main's cache either.
            let featureCommit: String = try #require(feature.commit)
            let (pinned, pinnedLog) = try await build(farm, "cache", BuildRequest(ref: "main", commit: featureCommit, mvncache: true))
            #expect(pinned.status == .succeeded, "\(pinned.error ?? "")")
            #expect(pinnedLog.contains("FOUND-PLANTED"), "a commit not on main must use the shared cache: \(pinnedLog)")
            #expect(FileManager.default.fileExists(atPath: agentData.appendingPathComponent("mvncache/protected/cache/planted").path))
            #expect(FileManager.default.fileExists(atPath: agentData.appendingPathComponent("mvncache/shared/cache/planted").path))
        }
    }


    @Test("a base image's ONBUILD triggers are checked before the image step: a trigger that mounts the host or copies another project's image fails the build and touches nothing; a harmless one runs, in the very image checked")
    func onbuildTriggers() async throws {
        try await withFarm { farm in
            try farm.infra.podman.ensureBusyboxImage(HostileBuildTests.busybox)
            try HostileBuildTests.publishHostileRepository(farm)
            let registry = farm.infra.registry.address
            let docker = DockerClient(socketPath: farm.infra.podman.socketPath)
            // What a trigger that reached the host would leave there.
            let marker = farm.dataDir.appendingPathComponent("onbuild-reached-the-host")
            let hostile = "RUN --mount=type=cache,id=\(String(repeating: "../", count: 12)),target=/h touch /h\(marker.path)"
            let scratch = try TempDir("onbuild")
            /// A docker-format image from busybox with these triggers, made in the farm's storage.
            func makeBase(_ name: String, _ triggers: [String]) throws {
                let dir = scratch.path(name.replacingOccurrences(of: "/", with: "_"))
                try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
                try (["FROM \(HostileBuildTests.busybox)"] + triggers.map { "ONBUILD " + $0 }).joined(separator: "\n")
                    .write(to: dir.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
                try farm.podman(["build", "--quiet", "--format", "docker", "-t", name, dir.path])
            }
            /// Pushed into the project's own repository as admin, then gone from the engine, so
            /// that the build pulls it (with the agent's credentials: anonymous pulls are refused).
            func pushBase(_ tag: String, _ triggers: [String]) async throws {
                try makeBase("\(registry)/onbuild:\(tag)", triggers)
                _ = try await docker.push(image: "\(registry)/onbuild", tag: tag, insecure: true, credentials: farm.admin) { _ in }
                try farm.podman(["rmi", "\(registry)/onbuild:\(tag)"])
            }
            try await pushBase("hostile", [hostile])
            try await pushBase("copyfrom", ["COPY --from=\(registry)/victim:v1 / /loot"])
            try await pushBase("ok", ["RUN echo ok-trigger-'ran'"])
            // A "public" image already in the engine's storage (as if another build pulled it).
            try makeBase("docker.io/hostile/onbuild:1", [hostile])
            defer { _ = try? farm.podman(["rmi", "-f", "docker.io/hostile/onbuild:1"]) }

            // The control: the engine itself runs the trigger, host mount and all.
            let context = scratch.path("control")
            try FileManager.default.createDirectory(at: context, withIntermediateDirectories: true)
            try "FROM docker.io/hostile/onbuild:1\n".write(to: context.appendingPathComponent("Dockerfile"), atomically: true, encoding: .utf8)
            _ = try await docker.build(contextDirectory: context, tag: "localhost/kiln-test/onbuild-control:1", confinement: BuildConfinement(network: .bridge)) { _ in }
            try? await docker.removeImage("localhost/kiln-test/onbuild-control:1", force: true)
            #expect(FileManager.default.fileExists(atPath: marker.path), "the control build did not reach the host: the test would prove nothing")
            try FileManager.default.removeItem(at: marker)

            for (dockerfile, base, why) in [
                ("onbuild-hostile.Dockerfile", "\(registry)/onbuild:hostile", "RUN --mount is not allowed"),
                ("onbuild-public.Dockerfile", "docker.io/hostile/onbuild:1", "RUN --mount is not allowed"),
                ("onbuild-copy.Dockerfile", "\(registry)/onbuild:copyfrom", "another project"),
            ] {
                try await addProject(farm, "onbuild", command: "true", dockerfile: dockerfile)
                let (b, log) = try await build(farm, "onbuild")
                #expect(b.status == .failed, "\(dockerfile): \(log)")
                #expect(b.steps.first { $0.name == .image }?.status == .failed)
                let error = b.error ?? ""
                #expect(error.contains("the base image \(base)") && error.contains("ONBUILD trigger") && error.contains(why), "\(dockerfile): \(error)")
                #expect(!log.contains("main-ran"), "\(dockerfile): the image step ran")
                #expect(!FileManager.default.fileExists(atPath: marker.path), "\(dockerfile): a trigger reached the host")
                #expect(!log.contains("pulling") || base.hasPrefix(registry), "\(dockerfile): \(log)")
                // Pulled for the check, gone with the step; nothing of the build was pushed.
                if base.hasPrefix(registry) { #expect(try farm.infra.podman.podmanCommand(["image", "exists", base]).status != 0, "\(base) stayed") }
                let tagged = try await tags(farm, "onbuild", list: true)
                #expect(!tagged.contains(b.tag ?? "?"), "\(dockerfile): \(tagged)")
            }

            // A harmless trigger runs, in a build that starts from the image checked, by its ID.
            try await addProject(farm, "onbuild", command: "true", dockerfile: "onbuild-ok.Dockerfile")
            let (ok, okLog) = try await build(farm, "onbuild")
            #expect(ok.status == .succeeded, "\(ok.error ?? "") \(okLog)")
            #expect(okLog.contains("ok-trigger-ran") && okLog.contains("main-ran"), "\(okLog)")
            let line = try #require(okLog.split(separator: "\n").first { $0.hasPrefix("base image \(registry)/onbuild:ok is sha256:") })
            let id = String(line.split(separator: " ")[4].dropFirst(7).prefix(64))
            #expect(okLog.contains("FROM \(id) AS first"), "the builder did not start from the image checked: \(okLog)")
            #expect(line.contains("RUN echo ok-trigger-'ran'"))
            #expect(try await tags(farm, "onbuild", list: true).contains(ok.tag ?? "?"))
        }
    }
}
}
