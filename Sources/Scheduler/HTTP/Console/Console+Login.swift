import Foundation
import Hummingbird
import KilnCore
import Logging

/// Logging in and out of the console (docs/console.md).
///
/// `GET /ui/login` shows the form; `POST /ui/login` checks the name and password (or one of
/// the user's API tokens) through the same `Authenticator.basicCaller` as HTTP Basic logins,
/// so the same `LoginThrottle` budget and the same answer for an unknown user and a wrong
/// password; then it starts a session (`ConsoleSession`) and sends the browser on to `next`,
/// a path of this console only. `POST /ui/logout` (a console form) deletes the session.
///
/// The login form has no session to tie a CSRF token to. It carries the value of a login
/// cookie instead (random, `HttpOnly; SameSite=Strict`, set by the GET), and the POST must
/// send both, equal, from a page of this console (the origin check of every console form).
/// Another site can neither read the cookie nor make the browser send it, so it cannot log
/// someone in under an account of its choosing (login CSRF), even in a browser that sent no
/// `Origin`.
extension Console {
    /// The one answer for an unknown user, a wrong password and a user without a password.
    static let loginRefusal = "wrong user name or password: check both and try again"

    func addLoginRoutes(to router: Router<KilnRequestContext>) {
        router.get("ui/login") { request, _ in
            let next = ConsoleHTTP.safeNext(request.uri.queryParameters["next"].map(String.init))
            do {
                if try await signedIn(request) != nil { return ConsoleHTTP.redirect(next) }
                return loginPage(request, next: next, user: "", message: nil, status: 200)
            } catch {
                return try errorPage(error, viewer: nil)
            }
        }
        router.post("ui/login") { request, context in
            do {
                let fields = try await formFields(request)
                let next = ConsoleHTTP.safeNext(fields["next"])
                let user = fields["user"] ?? "", password = fields["password"] ?? ""
                let cookies = cookies(request)
                guard let token = ConsoleCookies.value(cookies.login, in: request), SchedulerStore.isSessionCookie(token),
                      let sent = fields[ConsoleForm.tokenField], Secret.equal(sent, token) else {
                    throw KilnError.forbidden("the login form has expired or was not sent from this console's login page: open /ui/login and log in again")
                }
                guard !user.isEmpty, !password.isEmpty else {
                    return loginPage(request, next: next, user: user, message: "enter your user name and your password (or one of your API tokens)", status: 400)
                }
                let caller: Caller?
                do {
                    caller = try await auth.basicCaller(user: user, secret: password, allowPassword: true, address: context.peer)
                } catch let error as KilnError where error.httpStatus == 429 {
                    return loginPage(request, next: next, user: user, message: error.message, status: 429)
                }
                guard let caller else { return loginPage(request, next: next, user: user, message: Self.loginRefusal, status: 401) }
                // A new session each time: a cookie planted before the login is never promoted.
                if let old = ConsoleCookies.value(cookies.session, in: request) { try? await store.endSession(cookie: old) }
                let (cookie, _) = try await store.createSession(for: caller.user)
                logger.info("console login", metadata: ["user": "\(caller.user)", "address": "\(context.peer)"])
                return ConsoleHTTP.redirect(next, cookies: [
                    cookies.setCookie(cookies.session, cookie, maxAge: Int(ConsoleSession.lifetime)),
                    cookies.setCookie(cookies.login, "", maxAge: 0),
                ])
            } catch {
                return try errorPage(error, viewer: nil)
            }
        }
        form("ui/logout", to: router) { request, _, me, _ in
            try await store.endSession(cookie: me.cookie)
            logger.info("console logout", metadata: ["user": "\(me.caller.user)"])
            let cookies = cookies(request)
            return ConsoleHTTP.redirect("/ui/login", cookies: [cookies.setCookie(cookies.session, "", maxAge: 0)])
        }
    }

    /// The login form, with the login cookie (kept if the browser has a well-formed one, so two
    /// open login pages both work; renewed for an hour either way).
    func loginPage(_ request: Request, next: String, user: String, message: String?, status: Int) -> Response {
        let cookies = cookies(request)
        let token = ConsoleCookies.value(cookies.login, in: request).flatMap { SchedulerStore.isSessionCookie($0) ? $0 : nil } ?? Secret.random()
        let page = ConsolePages.login(token: token, next: next, user: Validation.printable(String(user.prefix(100))), message: message)
        return ConsoleHTTP.html(page, status: status, cookies: [cookies.setCookie(cookies.login, token, maxAge: 3600)])
    }
}
