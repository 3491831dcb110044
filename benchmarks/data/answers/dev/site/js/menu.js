/* Mobile menu toggle */
document.addEventListener('DOMContentLoaded', function () {
  var nav = document.querySelector('.main-nav');
  if (nav) { nav.classList.add('js-ready'); }
});
