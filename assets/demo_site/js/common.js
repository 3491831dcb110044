/* 东湖大学 公共脚本 */
function acceptCookies() { document.cookie = "elu_cookie_ok=1; path=/; max-age=31536000"; document.getElementById("cookie-banner").style.display = "none"; }
function initCookieBanner() { if (document.cookie.indexOf("elu_cookie_ok=1") >= 0) { var b = document.getElementById("cookie-banner"); if (b) b.style.display = "none"; } }
function addFavorite() { alert("请按 Ctrl+D 将本页加入收藏夹"); }
function share() { alert("请复制浏览器地址栏中的链接进行分享"); }
function _showDynClicks(type, owner, id) { /* 浏览次数由 CMS 动态统计，静态站点中保留原数值 */ }
function _simple_list_gotopage_fun(total, name, n) { window.location.href = "/index/tzgg/1.htm"; }
