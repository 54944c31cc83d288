(function(){
  var log = document.getElementById('log'), id = log.dataset.build, ended = false;
  function refresh(){
    return fetch('/ui/builds/' + id + '/summary', {cache: 'no-store'}).then(function(r){
      if (!r.ok) return;
      return r.text().then(function(t){ document.getElementById('summary').outerHTML = t; });
    }).catch(function(){});
  }
  async function follow(){
    try {
      var r = await fetch('/ui/builds/' + id + '/log?follow=1', {cache: 'no-store'});
      if (!r.ok) throw new Error('HTTP ' + r.status);
      var reader = r.body.getReader(), decoder = new TextDecoder();
      for (;;) {
        var part = await reader.read();
        if (part.done) break;
        var stick = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.appendChild(document.createTextNode(decoder.decode(part.value, {stream: true})));
        if (stick) log.scrollTop = log.scrollHeight;
      }
    } catch (e) {
      log.appendChild(document.createTextNode('\n[the log stream stopped: ' + e + ']\n'));
    }
    ended = true;
    log.dataset.ended = 'true';
    refresh();
  }
  follow();
  var timer = setInterval(function(){ if (ended) clearInterval(timer); else refresh(); }, 3000);
})();
