import Foundation
import KilnCore
import Plugins
import Testing

/// A project's pipeline is checked when the project is saved: a bad one is refused with the
/// reason, before any build would run it.
@Suite("Pipeline validation")
struct PipelineValidationTests {
    func pipeline(_ json: String) throws -> [PipelineStep] {
        try KilnJSON.decode([PipelineStep].self, from: json)
    }

    func refusal(_ json: String) throws -> String? {
        do {
            try PluginCatalog.validate(try pipeline(json))
            return nil
        } catch let error as KilnError {
            return error.message
        }
    }

    @Test func theLeEngineDeployPipelinePasses() throws {
        let good = """
        [{"plugin":"deploy","settings":{"app":"demo","port":8080,"cells":["cell-a","cell-b"],"replicas":2,"cpu":0.5,"memoryMB":256,"env":{"JAVA_OPTS":"-Xmx128m"},"healthPath":"/health"}},
         {"plugin":"lb","settings":{"group":"web","domain":"demo.local","app":"demo"},"timeoutSeconds":60},
         {"plugin":"retire","settings":{"app":"demo","keep":1}},
         {"plugin":"notify","settings":{"url":"https://chat.example.com/hook"}}]
        """
        #expect(try refusal(good) == nil)
        let secret = """
        [{"plugin":"deploy","settings":{"app":"demo","port":8080,"env":{"MODE":"prod"},"secretEnv":["DATABASE_URL","API_KEY"]}},
         {"plugin":"notify","settings":{"urlSecret":"CHAT_HOOK"}}]
        """
        #expect(try refusal(secret) == nil)
        #expect(try refusal("[]") == nil)
    }

    @Test func badPipelinesAreRefusedWithTheReason() throws {
        let cases: [(String, String)] = [
            (#"[{"plugin":"deploi","settings":{}}]"#, "pipeline step 1: unknown plugin 'deploi'; the plugins are deploy, lb, retire, notify"),
            (#"[{"plugin":"notify","settings":{"url":"https://x.example"}},{"plugin":"deploy","settings":{"port":8080}}]"#, "pipeline step 2 (deploy): setting 'app' is required"),
            (#"[{"plugin":"lb","settings":{"group":"web","app":"demo"}}]"#, "setting 'domain' is required"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"replica":2}}]"#, "'replica' is not a setting of deploy"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":"8080"}}]"#, "setting 'port' must be a integer"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":70000}}]"#, "out of range 1…65535"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"replicas":1.5}}]"#, "must be a whole number"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"backend":"nomad"}}]"#, "not one of local, kubernetes"),
            (#"[{"plugin":"deploy","settings":{"app":"Demo_App","port":8080}}]"#, "app name"),
            (#"[{"plugin":"lb","settings":{"app":"demo","group":"g","domain":"Demo.localhost;"}}]"#, "domain 'Demo.localhost;' is refused"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"healthPath":"health check"}}]"#, "must be a path starting with '/'"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"env":{"A":1}}}]"#, "must map names to strings"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"cells":[]}}]"#, "setting 'cells' is empty"),
            (#"[{"plugin":"notify","settings":{"url":"file:///etc/passwd"}}]"#, "not an http:// or https:// URL"),
            (#"[{"plugin":"notify","settings":{"url":"https://x.example"},"timeoutSeconds":0}]"#, "timeoutSeconds 0 is out of range"),
            (#"[{"plugin":"notify","settings":{}}]"#, "give url (an http:// or https:// URL) or urlSecret"),
            (#"[{"plugin":"notify","settings":{"url":"https://x.example","urlSecret":"HOOK"}}]"#, "give either url or urlSecret, not both"),
            (#"[{"plugin":"notify","settings":{"urlSecret":"chat-hook"}}]"#, "setting 'urlSecret' names a bad secret: secret name 'chat-hook' is not an environment variable name"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"secretEnv":["1KEY"]}}]"#, "setting 'secretEnv' names a bad secret"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"secretEnv":["PATH"]}}]"#, "would replace a variable the build's shell needs"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"secretEnv":["KEY","KEY"]}}]"#, "names a secret twice"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"secretEnv":"KEY"}}]"#, "setting 'secretEnv' must be a list of strings"),
            (#"[{"plugin":"deploy","settings":{"app":"demo","port":8080,"env":{"KEY":"x"},"secretEnv":["KEY"]}}]"#, "KEY is in both env and secretEnv"),
        ]
        for (json, reason) in cases {
            let message = try refusal(json)
            #expect(message?.contains(reason) == true, "\(json) -> \(message ?? "accepted")")
        }
    }
}
