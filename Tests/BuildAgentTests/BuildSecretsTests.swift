@testable import BuildAgent
import DockerAPI
import Foundation
import KilnCore
import KilnTestSupport
import LocalFarm
import Testing

/// Build secrets in the compile step, against real etcd, podman and git: what a hostile build
/// that prints its secrets gets shown, files it can read and that are gone afterwards, and the
/// secrets for protected refs only kept from a pinned commit that is not on its ref.
@Suite("Build secrets in the compile step, against real etcd and podman", .serialized)
struct BuildSecretsTests {
    static func token() -> String { "tok-" + Secret.random().prefix(24) }

    @Test("a build that prints its secrets, whole, split across two writes or as a file, shows [masked] and never a value")
    func masked() async throws {
        try await SecretsFarm.with(suite: "secrets") { farm in
            try farm.git.commit(["Dockerfile": "FROM \(busyboxImage)\nCOPY hello.txt /hello.txt\n", "hello.txt": "hello\n"])
            let api = Self.token(), prod = Self.token(), keyLine = "key-" + Secret.random()
            let config = "{\"user\": \"ci\",\n \"key\": \"\(keyLine)\"}\n"
            let source = FixedSecretsSource(BuildSecrets(env: [
                BuildSecret(name: "API_TOKEN", value: api), BuildSecret(name: "CONFIG_JSON", value: config, file: true),
                BuildSecret(name: "PROD_TOKEN", value: prod, protectedOnly: true),
            ], withheld: ["OTHER"]))
            let command = """
                echo "env: $API_TOKEN"
                printf 'split: %s' "${API_TOKEN%????????????}"; sleep 1.5; printf '%s <\\n' "${API_TOKEN#${API_TOKEN%????????????}}"
                cat /run/secrets/CONFIG_JSON
                echo "mode $(stat -c %a /run/secrets/CONFIG_JSON) owner $(stat -c %u /run/secrets/CONFIG_JSON) folder $(stat -c %a /run/secrets)"
                (echo x > /run/secrets/CONFIG_JSON) 2>/dev/null && echo writable || echo read-only
                echo "prod: $PROD_TOKEN"; echo "kiln: $KILN_PROJECT"
                cat /proc/1/cmdline | tr '\\0' ' '; echo
                """
            let built = try await farm.build(farm.project(command), source: source)
            #expect(built.build.status == .succeeded, "\(built.build.error ?? "")\n\(built.log)")
            #expect(source.calls == 1, "asked once per build")
            #expect(built.shows(any: [api, prod, keyLine, String(api.suffix(12)) + " <"]).isEmpty, "\(built.log)")
            for line in ["env: [masked]", "split: [masked] <", "\n[masked]\nmode 400 owner 0 folder 700", "read-only", "prod: [masked]", "kiln: secretapp",
                         "kiln: secrets received: build secrets API_TOKEN, CONFIG_JSON (file), PROD_TOKEN",
                         "kiln: secrets withheld (for protected refs only, and main is not one): OTHER",
                         "kiln: secrets for the build command: API_TOKEN (environment), CONFIG_JSON (/run/secrets/CONFIG_JSON), PROD_TOKEN (environment)"] {
                #expect(built.log.contains(line), "missing '\(line)' in:\n\(built.log)")
            }
            // The container's command line is the project's command: no value in it.
            #expect(built.log.contains("sh -c echo \"env: $API_TOKEN\""), "\(built.log)")
            #expect(farm.secretFolders.isEmpty, "the secret files are gone once the step has ended")
        }
    }

    @Test("files belong to the build's user (numeric or named) and are removed after a failed or cancelled step")
    func filesForTheBuildsUser() async throws {
        try await SecretsFarm.with(suite: "secrets") { farm in
            try farm.git.commit(["Dockerfile": "FROM \(busyboxImage)\n"])
            try await farm.ensureImage("localhost/kiln/busybox-uid1000:1", dockerfile: "FROM \(busyboxImage)\nUSER 1000:1000\n")
            try await farm.ensureImage("localhost/kiln/busybox-builder:1", dockerfile: """
                FROM \(busyboxImage)
                RUN echo 'builder:x:1234:1234::/tmp:/bin/sh' >> /etc/passwd && echo 'builder:x:1234:' >> /etc/group
                USER builder
                """)
            let value = Self.token()
            let source = FixedSecretsSource(BuildSecrets(env: [BuildSecret(name: "NPM_RC", value: value, file: true)]))
            let read = "echo \"uid $(id -u) reads $(cat /run/secrets/NPM_RC) owner $(stat -c %u /run/secrets/NPM_RC)\""
            for (image, uid) in [("localhost/kiln/busybox-uid1000:1", "1000"), ("localhost/kiln/busybox-builder:1", "1234")] {
                let built = try await farm.build(farm.project(read, buildImage: image), source: source)
                #expect(built.build.status == .succeeded, "\(image): \(built.build.error ?? "")\n\(built.log)")
                #expect(built.log.contains("uid \(uid) reads [masked] owner \(uid)"), "\(image):\n\(built.log)")
                #expect(built.shows(any: [value]).isEmpty)
                #expect(farm.secretFolders.isEmpty)
            }

            let failed = try await farm.build(farm.project("cat /run/secrets/NPM_RC; exit 3"), source: source)
            #expect(failed.build.status == .failed)
            #expect(failed.build.error?.contains("exited with status 3") == true, "\(failed.build.error ?? "")")
            #expect(failed.shows(any: [value]).isEmpty)
            #expect(farm.secretFolders.isEmpty, "removed after a failed step too")

            // Cancelled while the build command runs: the folder goes with the step.
            let project = farm.project("echo compile-running; sleep 60")
            let (id, key, revision, task) = try await farm.assign(project, ref: "main", commit: nil)
            let runner = farm.runner(source)
            try await runner.prepare()
            let control = BuildControl()
            let running = Task { await runner.run(task: task, taskKey: key, taskCreateRevision: revision, control: control) }
            try await waitUntil(farm.etcd, prefix: farm.keys.logs(of: id), timeout: .seconds(120)) { kvs in kvs.contains { $0.string.contains("\"compile-running\"") } }
            #expect(farm.secretFolders.count == 1, "the folder exists while the step runs")
            control.set(.requested)
            running.cancel()
            await running.value
            let cancelled = try await farm.result(id)
            #expect(cancelled.build.status == .cancelled, "\(cancelled.log)")
            #expect(farm.secretFolders.isEmpty, "removed after a cancelled step")
        }
    }

    @Test("a secret for protected refs only is not given to a pinned commit its ref does not hold")
    func protectedOnlyAndPinnedCommits() async throws {
        try await SecretsFarm.with(suite: "secrets") { farm in
            let onMain = try farm.git.commit(["Dockerfile": "FROM \(busyboxImage)\n"], message: "main")
            try farm.git.git("checkout", "--quiet", "-b", "feature")
            let offMain = try farm.git.commit(["feature.txt": "feature\n"], message: "feature")
            try farm.git.git("checkout", "--quiet", "main")
            let prod = Self.token(), common = Self.token()
            let source = FixedSecretsSource(BuildSecrets(env: [
                BuildSecret(name: "PROD_TOKEN", value: prod, protectedOnly: true), BuildSecret(name: "COMMON", value: common),
            ]))
            let project = farm.project("echo \"prod=${PROD_TOKEN:-absent} common=${COMMON:-absent}\"")

            let pinnedOff = try await farm.build(project, ref: "main", commit: offMain, source: source)
            #expect(pinnedOff.build.status == .succeeded, "\(pinnedOff.log)")
            #expect(pinnedOff.log.contains("prod=absent common=[masked]"), "\(pinnedOff.log)")
            #expect(pinnedOff.log.contains("kiln: secret PROD_TOKEN is not given to the build: for protected refs only, and the pinned commit \(offMain) is not on main"), "\(pinnedOff.log)")
            #expect(pinnedOff.shows(any: [prod, common]).isEmpty)

            let pinnedOn = try await farm.build(project, ref: "main", commit: onMain, source: source)
            #expect(pinnedOn.log.contains("prod=[masked] common=[masked]"), "\(pinnedOn.log)")

            // The scheduler withholds it from a feature branch; were one to arrive, the agent
            // leaves it out too.
            let feature = try await farm.build(project, ref: "feature", source: source)
            #expect(feature.log.contains("prod=absent common=[masked]"), "\(feature.log)")
            #expect(feature.log.contains("for protected refs only, and feature is not a protected ref"), "\(feature.log)")
        }
    }

    @Test("an agent without --scheduler says so in the build's log, and builds as before")
    func noScheduler() async throws {
        try await SecretsFarm.with(suite: "secrets") { farm in
            try farm.git.commit(["Dockerfile": "FROM \(busyboxImage)\n"])
            let built = try await farm.build(farm.project("echo \"token=${API_TOKEN:-none}\""), source: nil)
            #expect(built.build.status == .succeeded, "\(built.log)")
            #expect(built.log.contains("kiln: \(BuildRunner.noSecretsNote)"))
            #expect(built.log.contains("token=none"))
        }
    }
}
